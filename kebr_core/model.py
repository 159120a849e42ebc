"""KEBRModel: text encoder + text-based cross-modal fusion (TCMF) + heads (paper §3.3–3.5, docs/design.md §5).

    input_ids ──encoder──▶ X0t (B, Lt, dt) ─┐
    audio  X0a (B, La, da) ─────────────────┼─TCMF × K (Eq. 2, 7–8)─▶ X_K (B, Lt, dt) ─┬─ pretrain head at mask_pos (Eq. 15)
    vision X0v (B, Lv, dv) ─────────────────┘                                       ├─ fine-tune head on masked mean
                                                                                    └─ MCC cosines c_a, c_v (Eq. 9)

The text encoder is any Hugging Face encoder (name or local path), the embedded all-MiniLM-L6-v2 or a
`random-bert:...` (`kebr_core.text_encoder`).

Self-contained model folders: `KEBRModel.save_pretrained` / `KEBRModel.from_pretrained` (docs/design.md §6);
the class and its folder live in one module, so neither imports the other.

A model folder is a pretraining's final/, an evaluation's best-model/, or what `kebr export` writes:

    model.safetensors   KEBR's weights: TCMF (or late fusion), both heads, and the text encoder's when it was
                        trained (config.json "includes_encoder"); a frozen encoder's are not here
    config.json         the run's configuration, "includes_encoder", "text_encoder" (where each part of the
                        text model is), and for a fine-tuned model the features and extractor of its data
    text-encoder/       the tokenizer's files, always; the encoder's Hugging Face config.json when its name is
                        not one every machine resolves offline (`resolvable_offline`: a local folder, a Hub
                        name), with its model.safetensors too when it was frozen (trained weights are in
                        ../model.safetensors, so they are never stored twice)
    README.md           the model card (`kebr_core.model_card`)

So a folder copied alone to another machine loads and predicts the same: nothing is looked up by a path
that existed only where it was trained. `kebr export` stores the encoder whatever its name
(`store_encoder=True`). Every file is written through `checkpoints.save_checkpoint` (crash-safe replace) and read
through `checkpoints.read_checkpoint_config` / `checkpoints.load_checkpoint_weights`, so their checks apply here too.

A folder written before text-encoder/ existed (kebr ≤ this change) loads as it did: the encoder and the
tokenizer by the name in its config.json (`load_text_encoder`), which must then still resolve.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from torch import Tensor

from kebr_core import checkpoints, model_card, runs
from kebr_core.config import SECTIONS, MCCConfig, ModelConfig, RunConfig
from kebr_core.errors import KebrError
from kebr_core.modules.fusion import LateFusion, SymmetricFusion
from kebr_core.modules.mcc import MCCOutput, mcc_loss
from kebr_core.modules.pooling import masked_mean
from kebr_core.modules.tcmf import TCMF
from kebr_core.text_encoder import EMBEDDED_ALIASES, RANDOM_PREFIX, load_text_encoder, load_tokenizer


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

    # Self-contained model folders (the layout, and why not huggingface_hub's PyTorchModelHubMixin: the
    # module docstring, docs/design.md §6), written and read by the functions below.

    def save_pretrained(self, save_directory: str | Path, cfg=None, **options) -> Path:
        """Write this model as a self-contained folder (`save_pretrained` below; cfg: its RunConfig,
        default the one it was loaded with)."""
        return save_pretrained(self, save_directory, cfg, **options)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> "KEBRModel":
        """A model folder (best-model/, final/, a `kebr export`, a run directory holding one) or a Hub
        repository id, loaded in eval mode on the CPU with `run_config` and `tokenizer` attached."""
        return load_pretrained(name_or_path)


# ───────────────────────── self-contained model folders ─────────────────────────

HF_CONFIG = "config.json"  # the encoder's own Hugging Face config, inside text-encoder/
TOKENIZER_CONFIG = "tokenizer_config.json"  # what marks a saved tokenizer
# Keys of a checkpoint's config.json that `save_pretrained` sets itself (the rest is `extra`).
_OWN_KEYS = frozenset(SECTIONS) | {"includes_encoder", "text_encoder"}
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # a Hugging Face Hub repository id, owner/name


def resolvable_offline(text_model: str) -> bool:
    """Whether every machine with kebr builds this text model without files of its own: a `random-bert:`
    spec (built from the spec, seeded) or the embedded all-MiniLM-L6-v2 (a dependency of kebr)."""
    return text_model.startswith(RANDOM_PREFIX) or text_model in EMBEDDED_ALIASES


def save_pretrained(model: KEBRModel, path: str | Path, cfg: RunConfig | None = None, *,
                    include_encoder: bool | None = None, extra: Mapping[str, Any] | None = None,
                    store_encoder: bool | None = None, tokenizer=None, run_dir: str | Path | None = None) -> Path:
    """Write `model` as a self-contained model folder at `path` (module docstring), replacing one there.

    cfg: the run's configuration (default: the one it was loaded with, else its model and MCC settings).
    include_encoder: the encoder's weights go into model.safetensors (it was trained; default: the loaded
    folder's choice, else whether the encoder is trainable). extra: more keys of config.json (the
    features, stage, seed; default: the loaded folder's). store_encoder: write the encoder to
    text-encoder/ (default: when its name is not `resolvable_offline`; `kebr export`: always).
    tokenizer: the text model's (default: loaded by name). run_dir: the run the model card describes."""
    path = Path(path)
    loaded = getattr(model, "checkpoint_config", None) or {}
    if cfg is None:
        cfg = getattr(model, "run_config", None) or RunConfig(model=model.cfg, mcc=model.mcc_cfg)
    if include_encoder is None:
        include_encoder = bool(loaded["includes_encoder"]) if "includes_encoder" in loaded else any(
            p.requires_grad for p in model.encoder.parameters())
    if extra is None:
        extra = {k: v for k, v in loaded.items() if k not in _OWN_KEYS}
    if store_encoder is None:
        store_encoder = not resolvable_offline(cfg.model.text_model)
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None) or load_tokenizer(cfg.model.text_model)
    where = runs.TEXT_ENCODER if store_encoder else "by name"
    record = {"tokenizer": runs.TEXT_ENCODER, "architecture": where,
              "weights": runs.WEIGHTS if include_encoder else where}

    def write_more(folder: Path) -> None:
        side = folder / runs.TEXT_ENCODER
        tokenizer.save_pretrained(str(side))
        if store_encoder:
            if include_encoder:  # the trained weights are in model.safetensors: the architecture is enough
                model.encoder.config.save_pretrained(str(side))
            else:
                model.encoder.save_pretrained(str(side), safe_serialization=True)
        payload = json.loads((folder / runs.CONFIG).read_text())
        (folder / runs.MODEL_CARD).write_text(model_card.render(payload, model_card.read_results(run_dir)))

    checkpoints.save_checkpoint(path, model, cfg, include_encoder, dict(extra) | {"text_encoder": record}, write_more)
    return path


def encoder_source(folder: str | Path | None, text_model: str) -> str:
    """Where the text encoder of a model folder is described: its text-encoder/ when that holds the
    encoder's configuration, else the text model's name (`load_encoder` reads the same)."""
    side = Path(folder) / runs.TEXT_ENCODER if folder is not None else None
    return str(side) if side is not None and (side / HF_CONFIG).is_file() else text_model


def load_encoder(folder: str | Path, text_model: str) -> nn.Module:
    """The text encoder of a model folder: from text-encoder/ when it is stored there (its weights, or
    only its architecture when the trained weights are in model.safetensors), else by name."""
    side = Path(folder) / runs.TEXT_ENCODER
    if not (side / HF_CONFIG).is_file():
        return load_text_encoder(text_model)
    if (side / runs.WEIGHTS).is_file():
        return load_text_encoder(str(side))
    from transformers import AutoConfig, AutoModel

    try:
        # Its random initialisation is overwritten by model.safetensors; forked so that it does not move the
        # random stream the fusion and heads are initialised from (as loading the encoder by name does not).
        with torch.random.fork_rng(devices=[]):
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(side)))
    except (OSError, ValueError) as e:
        raise KebrError(f"{side} does not hold a usable text-encoder configuration ({str(e).splitlines()[0][:160]}).") from None
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # as load_text_encoder: KEBR reads the last hidden state only
    return encoder


def load_folder_tokenizer(folder: str | Path, text_model: str):
    """The tokenizer of a model folder: its text-encoder/ files, else (an older folder) by name."""
    side = Path(folder) / runs.TEXT_ENCODER
    return load_tokenizer(str(side) if (side / TOKENIZER_CONFIG).is_file() else text_model)


def local_folder(name_or_path: str | Path) -> Path:
    """A model folder on this machine: the path itself, or a Hub repository id ("owner/name") downloaded
    with huggingface_hub (needs the network, or the repository in the local Hub cache)."""
    path = Path(name_or_path)
    if path.exists() or not REPO_ID.fullmatch(str(name_or_path)):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(name_or_path)))
    except Exception as e:  # offline, unknown repository, no access: one sentence either way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KebrError(f"{name_or_path} is neither a folder here nor a Hub repository that could be downloaded ({first[:160]}).") from None


def build_from_folder(folder: str | Path, cfg: RunConfig, includes_encoder: bool,
                      skip_prefixes: tuple[str, ...] = (), route: str = "") -> KEBRModel:
    """The KEBRModel of `cfg` with the encoder (`load_encoder`) and weights of the model folder, and its
    tokenizer attached as `tokenizer`. A folder lacking weights the model needs (the encoder's when
    `includes_encoder`) is refused naming one, and `route` (what to do instead) when given. skip_prefixes:
    weights not loaded (kebr predict leaves the pretraining head out)."""
    from safetensors import safe_open

    folder = Path(folder)
    model = KEBRModel(cfg.model, cfg.mcc, encoder=load_encoder(folder, cfg.model.text_model))
    checkpoints.load_checkpoint_weights(model, folder, skip_prefixes=skip_prefixes)  # its checks of the file come first
    with safe_open(str(folder / runs.WEIGHTS), framework="pt") as f:
        saved = set(f.keys())
    needed = [k for k in model.state_dict() if not k.startswith(skip_prefixes)
              and (includes_encoder or not k.startswith("encoder."))]
    missing = [k for k in needed if k not in saved]
    if missing:
        raise KebrError(f"Checkpoint {folder} lacks weights the model needs, e.g. {missing[0]} (not a fine-tuned "
                        f"checkpoint?){': ' + route if route else ''}.")
    model.tokenizer = load_folder_tokenizer(folder, cfg.model.text_model)
    return model


def load_pretrained(name_or_path: str | Path, skip_prefixes: tuple[str, ...] = ()) -> KEBRModel:
    """A KEBRModel from a model folder (itself, a run's best-model/ or final/) or a Hub repository id, in
    eval mode on the CPU, with `run_config` (RunConfig), `checkpoint_config` (its config.json) and
    `tokenizer` attached (`build_from_folder`)."""
    path = local_folder(name_or_path)
    folder = checkpoints.resolve_model_dir(path) or checkpoints.resolve_checkpoint(path)  # itself or best-model/, else final/
    payload = checkpoints.read_checkpoint_config(folder)
    cfg = RunConfig.from_dict(payload, source=f"checkpoint {folder}")
    model = build_from_folder(folder, cfg, bool(payload.get("includes_encoder", False)), skip_prefixes)
    model.run_config, model.checkpoint_config = cfg, payload
    return model.eval()

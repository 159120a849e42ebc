"""The model set-up both training recipes share (docs/design.md §6): the configuration completed from
the store, the model (with pretrained weights when fine-tuning from a checkpoint), what is frozen, the
frozen encoder's text cache and the optimiser's parameter groups.

    what trains           pretraining (Eq. 16–17)          fine-tuning (Eq. 17)
    TCMF / late fusion    lr                               lr_fusion (None = lr)
    head                  pretraining head, lr             fine-tuning head, lr
    text encoder          lr_encoder with unfreeze         lr_encoder unless frozen
    schedule              constant                         cosine annealing, T_max = cosine_tmax

The other stage's head is frozen: it gets no gradient and is not in the optimiser. A frozen encoder
is not in the optimiser either; its outputs are computed once (`TextCache`) and gathered per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch

from kebr_core import checkpoints
from kebr_core.config import RunConfig
from kebr_core.data.store import FeatureStore
from kebr_core.model import KEBRModel
from kebr_core.model_size import check_model_size
from kebr_core.model import encoder_source, load_encoder
from kebr_core.text_cache import DiskTextCache, make_text_cache
from kebr_core.training import ProgressFn, TextCache, adam, no_progress, seed_everything

Stage = Literal["pretrain", "finetune"]


def configure_from_store(cfg: RunConfig, store: FeatureStore) -> None:
    """Set the model's audio and vision input widths to the store's (`FeatureStore.widths`)."""
    cfg.model.d_audio, cfg.model.d_vision = store.widths()


def pretrain_optimizer(model: KEBRModel, cfg: RunConfig) -> torch.optim.Adam:
    """Adam over what pretraining trains: TCMF and the pretraining head at `lr`, and the text encoder at
    `lr_encoder` with `unfreeze` (a frozen encoder is not in the optimiser). Constant rate."""
    groups = [{"params": model.fusion_parameters() + list(model.pretrain_head.parameters()), "lr": cfg.train.lr}]
    if cfg.train.unfreeze:
        groups.append({"params": list(model.encoder.parameters()), "lr": cfg.train.lr_encoder})
    return adam(groups, cfg.train.weight_decay)


def finetune_optimizer(
    model: KEBRModel, cfg: RunConfig
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """Adam over what fine-tuning trains, as the authors: TCMF at `lr_fusion` (None = `lr`), the
    fine-tuning head at `lr`, the text encoder at `lr_encoder` unless it is frozen (then it is not in the
    optimiser); every rate follows cosine annealing with T_max = `cosine_tmax`, stepped once per epoch."""
    lr_fusion = cfg.train.lr_fusion if cfg.train.lr_fusion is not None else cfg.train.lr
    groups = [
        {"params": model.fusion_parameters(), "lr": lr_fusion},
        {"params": list(model.finetune_head.parameters()), "lr": cfg.train.lr},
    ]
    if cfg.train.unfreeze:
        groups.append({"params": list(model.encoder.parameters()), "lr": cfg.train.lr_encoder})
    opt = adam(groups, cfg.train.weight_decay)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.train.cosine_tmax)


def build_model(cfg: RunConfig, device: torch.device, checkpoint: Path | None = None) -> KEBRModel:
    """KEBRModel on `device`, every weight initialised from the current random state,
    then a pretraining checkpoint's weights (TCMF, and the encoder when it was saved) loaded over it.
    Both heads keep their initialisation: the checkpoint's fine-tuning head was never trained, and
    loading it would give every fine-tuning seed the same head (their spread would understate the std)."""
    check_model_size(cfg, encoder_from=encoder_source(checkpoint, cfg.model.text_model))  # before any allocation
    # The encoder of a self-contained checkpoint comes from its folder (a copied final/ fine-tunes where the
    # text model's local path does not exist); otherwise, and for older folders, by name.
    encoder = load_encoder(checkpoint, cfg.model.text_model) if checkpoint is not None else None
    model = KEBRModel(cfg.model, cfg.mcc, encoder=encoder).to(device)
    if checkpoint is not None:
        checkpoints.load_checkpoint_weights(model, Path(checkpoint), skip_prefixes=("pretrain_head.", "finetune_head."))
    return model


@dataclass
class ModelSetup:
    model: KEBRModel
    frozen: bool  # the text encoder is frozen (cfg.train.unfreeze is False)
    cache: TextCache | DiskTextCache | None  # the frozen encoder's outputs per text; None when it trains
    optimizer: torch.optim.Adam
    scheduler: torch.optim.lr_scheduler.CosineAnnealingLR | None  # fine-tuning only


def setup_model(
    cfg: RunConfig,
    device: torch.device,
    stage: Stage,
    *,
    token_ids: Sequence[Sequence[int]],
    checkpoint: Path | None = None,
    seed: int | None = None,
    cache: TextCache | DiskTextCache | None = None,
    cache_dir: Path | None = None,
    progress: ProgressFn = no_progress,
) -> ModelSetup:
    """The model of `stage` ready to train (module docstring): built (`build_model`), the encoder and the
    other stage's head frozen, the text cache and the optimiser.

    token_ids: every text of the store in store order (pretraining: masked), for the text cache.
    checkpoint: pretrained weights to fine-tune from. seed: when given, every random stream is seeded
    with it first (each fine-tuning seed's initialisation); None leaves them to the caller.
    cache: a text cache built earlier for the same frozen encoder (each fine-tuning seed reuses the
    first one's), else it is built here (`text_cache.make_text_cache`; on disk in `cache_dir`, the run's
    text-cache/, unless `train.text_cache_dir` names another folder).
    """
    if seed is not None:
        seed_everything(seed)
    model = build_model(cfg, device, checkpoint)
    frozen = not cfg.train.unfreeze
    model.set_encoder_trainable(not frozen)
    unused_head = model.finetune_head if stage == "pretrain" else model.pretrain_head
    unused_head.requires_grad_(False)
    if not frozen:
        cache = None
    elif cache is None:
        cache = make_text_cache(model.encoder, token_ids, device, cfg.train, cache_dir, progress=progress)
    if stage == "pretrain":
        optimizer, scheduler = pretrain_optimizer(model, cfg), None
    else:
        optimizer, scheduler = finetune_optimizer(model, cfg)
    return ModelSetup(model, frozen, cache, optimizer, scheduler)

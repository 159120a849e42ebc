"""Recipe: knowledge-enhanced pretraining (paper §3.2, §3.5; DESIGN §6).

Every sample of the store (labels are not needed) has its strongest sentiment word masked (§3.2). The
model predicts that word's lexicon score from the fused representation at the masked position:

    L = L1(pred, y_mask)  (Eq. 16)  +  λ · L_mcc  (Eq. 10, 17)

With the text encoder frozen (the default, as the authors), the encoder's output for an unchanged masked
text is the same every epoch, so it is computed once (`TextCache`) and gathered per batch; only TCMF and
the head are trained. Each batch is padded to its own longest sequence.

Writes into the run directory: config.json, metrics.csv (one row per epoch), checkpoints/epoch-NNNN
(every `checkpoint_every` epochs), last/ (weights + optimizer + RNG state, for --resume) and final/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from kebr_core.config import RunConfig
from kebr_core.data.dataset import Collator, StoreDataset
from kebr_core.data.store import FeatureStore
from kebr_core.distributed import barrier, init_distributed
from kebr_core.errors import KebrError
from kebr_core.lexicon import load_lexicon
from kebr_core.masking import mask_batch
from kebr_core.model import KEBRModel, load_tokenizer
from kebr_core.training import (
    MetricsLog,
    ProgressFn,
    build_text_cache,
    load_checkpoint_weights,
    no_progress,
    prepare_run_dir,
    resolve_device,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    train_epoch,
)


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path  # final/ (or last/ when interrupted)
    epochs_done: int
    last_row: dict[str, float]


def store_widths(store: FeatureStore) -> tuple[int, int]:
    """The model's audio and vision input widths for a store: its feature counts (a text-only store,
    which names none, gets width 1: the collate gives it one always-masked zero column)."""
    return max(len(store.audio_features), 1), max(len(store.vision_features), 1)


def configure_from_store(cfg: RunConfig, store: FeatureStore) -> None:
    cfg.model.d_audio, cfg.model.d_vision = store_widths(store)


def pretrain(
    store_path: str | Path,
    run_dir: str | Path,
    cfg: RunConfig,
    *,
    resume: bool = False,
    progress: ProgressFn = no_progress,
) -> PretrainResult:
    run_dir = Path(run_dir)
    store = FeatureStore(store_path)
    if len(store) == 0:
        raise KebrError(f"Store {store_path} holds no samples to pretrain on.")
    configure_from_store(cfg, store)
    info, device = init_distributed(resolve_device(cfg.train.device))
    if info.is_main:
        prepare_run_dir(run_dir, cfg, resume, extra={"stage": "pretrain", "store": str(store_path), "world_size": info.world})
    seed_everything(cfg.train.seed)

    # Masking is seeded per sample, so it is done once here and the masked texts never change.
    tokenizer = load_tokenizer(cfg.model.text_model)
    masked = mask_batch(store.texts, tokenizer, load_lexicon(), cfg.model.max_text_len, seed=cfg.train.seed)
    encoded = [{"input_ids": m.input_ids, "mask_pos": m.mask_pos, "mask_label": m.label} for m in masked]
    dataset = StoreDataset(store, split=None, text_encoder=lambda texts: encoded)
    collate = Collator(cfg.model.max_text_len, cfg.model.max_audio_len, cfg.model.max_vision_len, pad_id=tokenizer.pad_token_id or 0)

    model = KEBRModel(cfg.model, cfg.mcc).to(device)
    frozen = not cfg.train.unfreeze
    model.set_encoder_trainable(not frozen)
    model.finetune_head.requires_grad_(False)  # unused while pretraining
    cache = build_text_cache(model.encoder, [e["input_ids"] for e in encoded], device, progress=progress) if frozen else None

    groups = [{"params": model.fusion_parameters() + list(model.pretrain_head.parameters()), "lr": cfg.train.lr}]
    if not frozen:
        groups.append({"params": list(model.encoder.parameters()), "lr": cfg.train.lr_encoder})
    opt = torch.optim.Adam(groups, weight_decay=cfg.train.weight_decay)

    start_epoch = 1
    last_dir = run_dir / "last"
    if resume and last_dir.exists():
        state = torch.load(last_dir / "trainer.pt", weights_only=False)
        load_checkpoint_weights(model, last_dir)
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start_epoch = state["epoch"] + 1
    net = DistributedDataParallel(model) if info.enabled else model
    log = MetricsLog(run_dir / "metrics.csv", truncate_after_epoch=start_epoch - 1) if info.is_main else None

    def checkpoint(path: Path, epoch: int, trainer: bool = True) -> None:
        if info.is_main:
            state = {"optimizer": opt.state_dict(), "rng": rng_state(), "epoch": epoch} if trainer else None
            save_checkpoint(path, model, cfg, include_encoder=not frozen, trainer_state=state)
        barrier(info)

    epoch = completed = start_epoch - 1
    row: dict = {}
    try:
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            row = train_epoch(net, dataset, collate, cache, opt, cfg, device, epoch, task="pretrain", frozen=frozen,
                              info=info, seed=cfg.train.seed, progress=progress)
            completed = epoch
            if log is not None:
                log.append(row)
            progress("pretrain", epoch, cfg.train.epochs, row)
            if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs:
                checkpoint(last_dir, epoch)
                if epoch % cfg.train.checkpoint_every == 0:
                    checkpoint(run_dir / "checkpoints" / f"epoch-{epoch:04d}", epoch, trainer=False)
    except KeyboardInterrupt:
        # last/ gets the state as it is now, labelled with the last epoch that finished, so --resume starts
        # at the next one. Stopped between epochs, the resumed run is bit for bit the uninterrupted one;
        # stopped inside an epoch, that epoch's finished steps stay in the weights and it is run again.
        if info.is_main:
            save_checkpoint(last_dir, model, cfg, include_encoder=not frozen,
                            trainer_state={"optimizer": opt.state_dict(), "rng": rng_state(), "epoch": completed})
        raise
    final = run_dir / "final"
    checkpoint(final, epoch, trainer=False)
    return PretrainResult(run_dir=run_dir, checkpoint=final, epochs_done=epoch, last_row=row)

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

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kebr_core.config import RunConfig
from kebr_core.data.dataset import Collator, StoreDataset
from kebr_core.data.store import FeatureStore
from kebr_core.errors import KebrError
from kebr_core.lexicon import load_lexicon
from kebr_core.masking import mask_batch
from kebr_core.model import KEBRModel, load_tokenizer
from kebr_core.training import (
    MetricsLog,
    ProgressFn,
    autocast,
    build_text_cache,
    balance_sums,
    check_finite,
    epoch_row,
    load_checkpoint_weights,
    move,
    no_progress,
    prepare_run_dir,
    resolve_device,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path  # final/ (or last/ when interrupted)
    epochs_done: int
    last_row: dict[str, float]


def configure_from_store(cfg: RunConfig, store: FeatureStore) -> None:
    """The model's input widths come from the store's feature names."""
    cfg.model.d_audio = len(store.audio_features)
    cfg.model.d_vision = len(store.vision_features)
    if cfg.model.d_audio == 0 or cfg.model.d_vision == 0:
        raise KebrError(f"Store {store.path} names no audio or no vision features; KEBR needs both streams.")


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
    device = resolve_device(cfg.train.device)
    prepare_run_dir(run_dir, cfg, resume, extra={"stage": "pretrain", "store": str(store_path)})
    seed_everything(cfg.train.seed)

    # Masking is seeded per sample, so it is done once here and the masked texts never change.
    tokenizer = load_tokenizer(cfg.model.text_model)
    masked = mask_batch(store.texts, tokenizer, load_lexicon(), cfg.model.max_text_len, seed=cfg.train.seed)
    encoded = [{"input_ids": m.input_ids, "mask_pos": m.mask_pos, "mask_label": m.label} for m in masked]
    dataset = StoreDataset(store_path, split=None, text_encoder=lambda texts: encoded)
    collate = Collator(cfg.model.max_text_len, cfg.model.max_audio_len, cfg.model.max_vision_len)

    model = KEBRModel(cfg.model, cfg.mcc).to(device)
    frozen = not cfg.train.unfreeze
    model.set_encoder_trainable(not frozen)
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
    log = MetricsLog(run_dir / "metrics.csv", truncate_after_epoch=start_epoch - 1)

    def checkpoint(path: Path, epoch: int) -> None:
        trainer = {"optimizer": opt.state_dict(), "rng": rng_state(), "epoch": epoch}
        save_checkpoint(path, model, cfg, include_encoder=not frozen, trainer_state=trainer)

    epoch, row = start_epoch - 1, {}
    try:
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            row = _train_one_epoch(model, dataset, collate, cache, opt, cfg, device, epoch, frozen, progress)
            log.append(row)
            progress("pretrain", epoch, cfg.train.epochs, row)
            if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs:
                checkpoint(last_dir, epoch)
                if epoch % cfg.train.checkpoint_every == 0:
                    save_checkpoint(run_dir / "checkpoints" / f"epoch-{epoch:04d}", model, cfg, include_encoder=not frozen)
    except KeyboardInterrupt:
        # The epoch in flight is dropped; last/ holds the last complete one, and --resume goes on from it.
        checkpoint(last_dir, epoch - 1)
        raise
    final = run_dir / "final"
    save_checkpoint(final, model, cfg, include_encoder=not frozen)
    return PretrainResult(run_dir=run_dir, checkpoint=final, epochs_done=epoch, last_row=row)


def _train_one_epoch(model, dataset, collate, cache, opt, cfg: RunConfig, device, epoch: int, frozen: bool, progress):
    # The shuffle depends only on (seed, epoch): a resumed run sees the same batches as an uninterrupted one.
    gen = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
    loader = DataLoader(
        dataset, batch_size=cfg.train.batch_size, shuffle=True, generator=gen, collate_fn=collate,
        num_workers=cfg.train.workers, pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    model.train()
    if frozen:
        model.encoder.eval()
    t0 = time.perf_counter()
    sums = torch.zeros(8, device=device)  # see training.balance_sums
    for step, batch in enumerate(loader):
        batch = move(batch, device)
        hidden = cache.gather(batch["index"], batch["input_ids"].shape[1]) if cache is not None else None
        with autocast(device, cfg.train.bf16):
            out = model(batch, task="pretrain", text_hidden=hidden)
        task_loss = (out.pred.float() - batch["mask_label"]).abs().mean()
        loss = task_loss + cfg.mcc.weight * out.mcc.loss.float()
        check_finite(loss, epoch, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        with torch.no_grad():
            sums += balance_sums(loss, task_loss, out.mcc)
    return epoch_row(epoch, sums, time.perf_counter() - t0)

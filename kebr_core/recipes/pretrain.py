"""Recipe: knowledge-enhanced pretraining (paper §3.2, §3.5; docs/design.md §6).

Every sample of the store (or of the chosen splits; labels are not needed) has its strongest sentiment
word masked (§3.2). The model predicts that word's lexicon score from the fused representation at the
masked position:

    L = L1(pred, y_mask)  (Eq. 16)  +  λ · L_mcc  (Eq. 10, 17)

With the text encoder frozen (the default, as the authors), the encoder's output for an unchanged masked
text is the same every epoch, so it is computed once (`TextCache`) and gathered per batch; only TCMF and
the head are trained. Each batch is padded to its own longest sequence.

A sample whose transcript has no words (extraction keeps silent videos, with empty text) has no word
to mask and so no target: it is left out, counted, and the count is written to config.json
(`samples_without_words`) and returned; a selection where no sample has words is an error.

Writes into the run directory: config.json, metrics.csv (one row per epoch), checkpoints/epoch-NNNN
(every `checkpoint_every` epochs), last/ (weights + optimizer + RNG state, for --resume) and final/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from kebr_core.config import RunConfig
from kebr_core.data.dataset import Collator, StoreDataset
from kebr_core.data.store import FeatureStore
from kebr_core.distributed import barrier, init_distributed
from kebr_core.errors import KebrError
from kebr_core.lexicon import load_lexicon
from kebr_core.masking import mask_batch, tokenize_plain
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
    samples: int  # samples pretrained on
    samples_without_words: int  # selected samples left out: their text has no word to mask


def store_widths(store: FeatureStore) -> tuple[int, int]:
    """The model's audio and vision input widths for a store: its feature counts (a text-only store,
    which names none, gets width 1: the collate gives it one always-masked zero column)."""
    return max(len(store.audio_features), 1), max(len(store.vision_features), 1)


def configure_from_store(cfg: RunConfig, store: FeatureStore) -> None:
    cfg.model.d_audio, cfg.model.d_vision = store_widths(store)


def pretrain_optimizer(model: KEBRModel, cfg: RunConfig) -> torch.optim.Adam:
    """Adam over what pretraining trains (docs/design.md §6): TCMF and the pretraining head at `lr`, and the text
    encoder at `lr_encoder` with `unfreeze` (a frozen encoder is not in the optimiser). Constant rate."""
    groups = [{"params": model.fusion_parameters() + list(model.pretrain_head.parameters()), "lr": cfg.train.lr}]
    if cfg.train.unfreeze:
        groups.append({"params": list(model.encoder.parameters()), "lr": cfg.train.lr_encoder})
    return torch.optim.Adam(groups, weight_decay=cfg.train.weight_decay)


def pretrain(
    store_path: str | Path,
    run_dir: str | Path,
    cfg: RunConfig,
    *,
    splits: Sequence[str] | None = None,
    resume: bool = False,
    progress: ProgressFn = no_progress,
) -> PretrainResult:
    """Pretrain on the samples of `splits` of the store (None: all of them), writing into run_dir."""
    run_dir = Path(run_dir)
    store = FeatureStore(store_path)
    selected = store.indices(list(splits) if splits is not None else None)
    if len(selected) == 0:
        where = f"in split(s) {', '.join(splits)}" if splits is not None else "at all"
        raise KebrError(f"Store {store_path} holds no samples {where} to pretrain on.")
    configure_from_store(cfg, store)
    info, device = init_distributed(resolve_device(cfg.train.device))

    # Masking is seeded per store index, so it is done once here and the masked texts never change.
    tokenizer = load_tokenizer(cfg.model.text_model)
    masked = mask_batch(store.texts, tokenizer, load_lexicon(), cfg.model.max_text_len, seed=cfg.train.seed,
                        skip_empty=True)
    has_words = np.array([m is not None for m in masked])
    used = selected[has_words[selected]]
    if len(used) == 0:
        raise KebrError(f"No sample of {store_path} selected for pretraining has a word in its transcript, "
                        "so there is no word to mask.")
    without_words = len(selected) - len(used)
    if info.is_main:
        prepare_run_dir(run_dir, cfg, resume, extra={
            "stage": "pretrain", "store": str(store_path), "world_size": info.world,
            "splits": list(splits) if splits is not None else None, "samples": len(used),
            "samples_without_words": without_words,
        })
    seed_everything(cfg.train.seed)
    # Samples outside `used` keep a placeholder ([CLS] [SEP], never read: the Subset leaves them out) so
    # the dataset and the text cache stay indexed by store index.
    placeholder = {"input_ids": tokenize_plain([""], tokenizer, cfg.model.max_text_len)[0], "mask_pos": 0, "mask_label": 0.0}
    in_use = np.zeros(len(store), dtype=bool)
    in_use[used] = True
    encoded = [{"input_ids": m.input_ids, "mask_pos": m.mask_pos, "mask_label": m.label} if in_use[i] else placeholder
               for i, m in enumerate(masked)]
    dataset = Subset(StoreDataset(store, split=None, text_encoder=lambda texts: encoded), used.tolist())
    collate = Collator(cfg.model.max_text_len, cfg.model.max_audio_len, cfg.model.max_vision_len, pad_id=tokenizer.pad_token_id or 0)

    model = KEBRModel(cfg.model, cfg.mcc).to(device)
    frozen = not cfg.train.unfreeze
    model.set_encoder_trainable(not frozen)
    model.finetune_head.requires_grad_(False)  # unused while pretraining
    cache = build_text_cache(model.encoder, [e["input_ids"] for e in encoded], device, progress=progress) if frozen else None

    opt = pretrain_optimizer(model, cfg)

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
    return PretrainResult(run_dir=run_dir, checkpoint=final, epochs_done=epoch, last_row=row, samples=len(used),
                          samples_without_words=without_words)

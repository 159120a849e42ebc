"""Recipe: knowledge-enhanced pretraining (paper §3.2, §3.5; docs/design.md §6).

Every sample of the store (or of the chosen splits; labels are not needed) has its strongest sentiment
word masked (§3.2). The model predicts that word's lexicon score from the fused representation at the
masked position:

    L = L1(pred, y_mask)  (Eq. 16)  +  λ · L_mcc  (Eq. 10, 17)

With the text encoder frozen (the default, as the authors), the encoder's output for an unchanged masked
text is the same every epoch, so it is computed once (`TextCache`; with `train.random_word = "per-epoch"`
the random-word texts are masked and encoded anew each epoch) and gathered per batch; only TCMF and
the head are trained. Each batch is padded to its own longest sequence.

A sample whose transcript has no words (extraction keeps silent videos, with empty text) has no word
to mask and so no target: it is left out, counted, and the count is written to config.json
(`samples_without_words`) and returned; a selection where no sample has words is an error.

Writes into the run directory (`kebr_core.runs`): config.json, metrics.csv (one row per epoch),
checkpoints/epoch-NNNN/ (weights + optimizer state, every `checkpoint_every` epochs and at the end; the
newest `keep_checkpoints` are kept) with checkpoints/latest naming the newest, and final/.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from kebr_core import runs
from kebr_core.config import RunConfig
from kebr_core.data.dataset import Collator, StoreDataset
from kebr_core.data.store import FeatureStore
from kebr_core.distributed import barrier, check_nodes_agree, init_distributed
from kebr_core.errors import KebrError
from kebr_core.lexicon import load_lexicon
from kebr_core.masking import mask_batch, tokenize_plain
from kebr_core.model import load_tokenizer
from kebr_core.recipes.setup import configure_from_store, setup_model
from kebr_core.runs import MetricsLog
from kebr_core.training import (
    ProgressFn, build_text_cache, no_progress, resolve_device, seed_everything, train_epoch,
)


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path  # final/
    epochs_done: int
    last_row: dict[str, float]
    samples: int  # samples pretrained on
    samples_without_words: int  # selected samples left out: their text has no word to mask


def pretrain_identity(store_path: str | Path, cfg: RunConfig, splits: Sequence[str] | None = None) -> dict:
    """What a pretraining run directory is tied to (`kebr_core.runs`): the configuration completed from
    the store, the store's fingerprint and the splits pretrained on."""
    cfg = RunConfig.from_dict(cfg.to_dict())
    configure_from_store(cfg, FeatureStore(store_path))
    return runs.run_identity(cfg, "pretrain", runs.data_fingerprint(store_path),
                             splits=list(splits) if splits is not None else None)


def pretrain(
    store_path: str | Path,
    run_dir: str | Path,
    cfg: RunConfig,
    *,
    splits: Sequence[str] | None = None,
    resume: bool = False,
    resume_if_possible: bool = False,
    force: bool = False,
    progress: ProgressFn = no_progress,
) -> PretrainResult:
    """Pretrain on the samples of `splits` of the store (None: all of them) into `run_dir` (layout:
    `kebr_core.runs`).

    resume: continue from the run's latest checkpoint (KebrError when there is none, unless
    `resume_if_possible`, which starts afresh then); `train.epochs` may grow on resume. force: start
    afresh, removing the run's own files. A directory holding another run (other settings, data or
    splits) is refused, naming the differing keys."""
    run_dir = Path(run_dir)
    cfg.validate()
    store = FeatureStore(store_path)
    selected = store.indices(list(splits) if splits is not None else None)
    if len(selected) == 0:
        where = f"in split(s) {', '.join(splits)}" if splits is not None else "at all"
        raise KebrError(f"Store {store_path} holds no samples {where} to pretrain on.")
    configure_from_store(cfg, store)
    info, device = init_distributed(resolve_device(cfg.train.device))
    check_nodes_agree(info, run_dir, store_path, cfg.to_dict())
    resume = resume or resume_if_possible
    latest = runs.latest_checkpoint(run_dir) if resume and not force else None
    if resume and latest is None and not resume_if_possible and not force:
        raise KebrError(f"Nothing to resume in {run_dir}: it holds no checkpoint (pass --resume-if-possible to "
                        "start afresh when there is none).")

    # Masking is seeded per store index, so it is done once here and the masked texts never change;
    # with the random word redrawn per epoch, the texts without a lexicon word are masked anew each epoch.
    tokenizer = load_tokenizer(cfg.model.text_model)
    lexicon = load_lexicon()
    per_epoch = cfg.train.random_word == "per-epoch"

    def mask_for(epoch: int | None):
        return mask_batch(store.texts, tokenizer, lexicon, cfg.model.max_text_len, seed=cfg.train.seed,
                          skip_empty=True, epoch=epoch)

    masked = mask_for(None)
    has_words = np.array([m is not None for m in masked])
    used = selected[has_words[selected]]
    if len(used) == 0:
        raise KebrError(f"No sample of {store_path} selected for pretraining has a word in its transcript, "
                        "so there is no word to mask.")
    without_words = len(selected) - len(used)
    if info.is_main:
        runs.prepare_run_dir(run_dir, pretrain_identity(store_path, cfg, splits), resume=resume, force=force,
                             may_differ=("train.epochs",) if resume else (),
                             extra={"store": str(store_path), "world_size": info.world, "samples": len(used),
                                    "samples_without_words": without_words})
    barrier(info)
    seed_everything(cfg.train.seed)
    # Samples outside `used` keep a placeholder ([CLS] [SEP], never read: the Subset leaves them out) so
    # the dataset and the text cache stay indexed by store index.
    placeholder = {"input_ids": tokenize_plain([""], tokenizer, cfg.model.max_text_len)[0], "mask_pos": 0, "mask_label": 0.0}
    in_use = np.zeros(len(store), dtype=bool)
    in_use[used] = True

    def encode(masked_texts) -> list[dict]:
        return [{"input_ids": m.input_ids, "mask_pos": m.mask_pos, "mask_label": m.label} if in_use[i]
                else placeholder for i, m in enumerate(masked_texts)]

    def subset(encoded: list[dict]) -> Subset:
        return Subset(StoreDataset(store, split=None, text_encoder=lambda texts: encoded), used.tolist())

    encoded = encode(masked)
    dataset = subset(encoded)
    collate = Collator.from_config(cfg.model, tokenizer.pad_token_id)
    random_word = [int(i) for i in used if not masked[i].from_lexicon]  # what a per-epoch redraw changes

    setup = setup_model(cfg, device, "pretrain", token_ids=[e["input_ids"] for e in encoded], progress=progress)
    model, frozen, cache, opt = setup.model, setup.frozen, setup.cache, setup.optimizer

    start_epoch = 1
    if latest is not None:
        # Loaded to the CPU (a run checkpointed on a GPU resumes anywhere); Adam moves its state to the
        # parameters' device, and the CPU copy is dropped with `state`.
        state = runs.load_trainer_state(latest)
        runs.load_checkpoint_weights(model, latest)
        opt.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        del state
    net = DistributedDataParallel(model) if info.enabled else model
    log = MetricsLog(run_dir / runs.METRICS, truncate_after_epoch=start_epoch - 1) if info.is_main else None
    payload = runs.checkpoint_payload(cfg, include_encoder=not frozen)

    def save(epoch: int, weights: dict, optimizer: dict) -> None:
        if info.is_main:
            runs.save_resume_checkpoint(run_dir, epoch, weights, payload, {"optimizer": optimizer},
                                        keep=cfg.train.keep_checkpoints)
        barrier(info)

    epoch = saved = start_epoch - 1
    row: dict = {}
    snapshot: tuple[int, dict, dict] | None = None  # the state at the end of the last epoch not on disk
    try:
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            if per_epoch:  # every epoch's draw is a function of (seed, epoch): a resumed run draws the same
                encoded = encode(mask_for(epoch))
                dataset = subset(encoded)
                if cache is not None and random_word:  # only the random words changed: re-encode those
                    cache.replace(random_word, build_text_cache(
                        model.encoder, [encoded[i]["input_ids"] for i in random_word], device))
            row = train_epoch(net, dataset, collate, cache, opt, cfg, device, epoch, task="pretrain", frozen=frozen,
                              info=info, seed=cfg.train.seed, progress=progress)
            if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs:
                save(epoch, runs.model_weights(model, not frozen), opt.state_dict())
                saved, snapshot = epoch, None
            elif info.is_main:
                # Kept in memory so that Ctrl-C at any later moment saves this epoch's end exactly
                # (the random streams are seeded per epoch: `seed_epoch`), never a half-done step.
                weights = {k: v.clone() for k, v in runs.model_weights(model, not frozen).items()}  # not views
                snapshot = (epoch, weights, copy.deepcopy(opt.state_dict()))
            if log is not None:
                log.append(row)
            progress("pretrain", epoch, cfg.train.epochs, row)
    except KeyboardInterrupt:
        if info.is_main and snapshot is not None and snapshot[0] > saved:
            runs.save_resume_checkpoint(run_dir, snapshot[0], snapshot[1], payload, {"optimizer": snapshot[2]},
                                        keep=cfg.train.keep_checkpoints)
        raise
    final = run_dir / runs.FINAL
    if info.is_main:
        runs.save_checkpoint(final, model, cfg, include_encoder=not frozen)
    barrier(info)
    return PretrainResult(run_dir=run_dir, checkpoint=final, epochs_done=epoch, last_row=row, samples=len(used),
                          samples_without_words=without_words)

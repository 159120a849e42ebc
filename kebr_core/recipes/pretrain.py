"""Recipe: knowledge-enhanced pretraining (paper §3.2, §3.5; docs/design.md §6).

Every sample of the chosen splits (labels are not needed) has its strongest sentiment word masked (§3.2).
Which splits: `pretraining_data`, the one rule `kebr pretrain` and `kebr ablate` share. A store with a
test split is pretrained on its train, valid and unlabeled samples only: the paper pretrains on separate
unlabeled video, and pretraining on the test inputs (even without labels) would be transductive;
`on_test` opts in. The splits and the sample count are in config.json (and the splits in the identity). The model predicts that word's lexicon score from the fused representation at the
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
from torch.utils.data import Subset

from kebr_core import checkpoints, run_identity, runs
from kebr_core.config import RunConfig
from kebr_core.data.dataset import Collator, StoreDataset
from kebr_core.data.store import SPLITS, FeatureStore
from kebr_core.distributed import barrier, check_nodes_agree, data_parallel, init_distributed, on_main, refuse_unsupported
from kebr_core.errors import KebrError
from kebr_core.model_size import check_model_size
from kebr_core.lexicon import load_lexicon
from kebr_core.loaders import RunLoaders
from kebr_core.masking import PackedMasks, mask_packed, tokenize_plain
from kebr_core.text_encoder import load_tokenizer
from kebr_core.model import save_pretrained
from kebr_core.recipes.setup import configure_from_store, setup_model
from kebr_core.metric_logger import epoch_logger, require
from kebr_core.resume import EpochPosition, StepCheckpoints
from kebr_core.training import (
    ProgressFn, build_text_cache, loader_workers, no_progress, resolve_device, seed_everything, train_epoch,
)


PRETRAIN_SPLITS_WITHOUT_TEST = ("train", "valid", "unlabeled")


@dataclass(frozen=True)
class PretrainData:
    """Which samples of a store pretraining reads (`pretraining_data`)."""

    store: str
    splits: list[str] | None  # None: every sample (the store has no test split, or on_test)
    on_test: bool  # the test split's inputs are pretrained on (by choice)
    note: str  # the one sentence both commands print about the test split ("" for a store without labels or test)


def pretraining_data(store_path: str | Path, splits: Sequence[str] | None = None, on_test: bool = False) -> PretrainData:
    """The rule for which samples pretraining uses (module docstring): `splits` when given (naming `test`
    needs `on_test`), else the store's samples outside its test split, or all of them with `on_test` or
    when there is no test split. Its note says what the test split got: left out, included, or (a labeled
    store without one) that later tests on these samples would be transductive. KebrError for an unknown
    split name."""
    store = FeatureStore(store_path)
    has_test = len(store.indices("test")) > 0
    if splits is not None:
        splits = [s.strip() for s in splits if s.strip()]
        unknown = [s for s in splits if s not in SPLITS]
        if unknown or not splits:
            raise KebrError(f"--splits names {repr(unknown[0]) + ', which is not a split' if unknown else 'no split'}; "
                            f"give some of {', '.join(SPLITS)} (e.g. train,valid,unlabeled).")
        if "test" in splits and has_test and not on_test:
            raise KebrError(f"--splits names test: pretraining on the test inputs of {store_path} would be "
                            "transductive; pass --pretrain-on-test as well to do it knowingly.")
        on = "test" in splits and has_test
        return PretrainData(str(store_path), splits, on_test=on, note="" if on or not has_test else left_out_note(splits, store_path))
    if not has_test:
        labeled = int(np.isfinite(store.labels).sum())
        return PretrainData(str(store_path), None, on_test=False, note="" if not labeled else (
            f"Pretraining uses all samples of {store_path} (labels unused): it has no test split to leave out, so a "
            f"model later tested on its {labeled} labeled samples would have seen their inputs in pretraining "
            "(transductive); give the store a test split to keep one out."))
    if on_test:
        return PretrainData(str(store_path), None, on_test=True, note=(
            f"Pretraining uses all samples of {store_path}, the test split's inputs included (--pretrain-on-test; "
            "labels unused)."))
    chosen = list(PRETRAIN_SPLITS_WITHOUT_TEST)
    return PretrainData(str(store_path), chosen, on_test=False, note=left_out_note(chosen, store_path))


def left_out_note(splits: Sequence[str], store_path: str | Path) -> str:
    """The one sentence `pretrain` and `ablate` print when the store's test split is left out."""
    return (f"Pretraining uses the {', '.join(splits)} samples of {store_path} (labels unused; the test split is left "
            "out, as pretraining on test inputs would be transductive: --pretrain-on-test includes it).")


class MaskedItems:
    """What `StoreDataset` reads of each store sample's text (`text_encoder`), made from the packed masks
    when asked: input_ids, mask_pos, mask_label; a sample outside pretraining (`in_use` False) gets
    `placeholder` ([CLS] [SEP], never read) so the dataset and the text cache stay indexed by store
    index. No object per sample is kept (`masking.PackedMasks`)."""

    def __init__(self, masks: PackedMasks, in_use: np.ndarray, placeholder: np.ndarray):
        self.masks, self.in_use, self.placeholder = masks, in_use, placeholder

    def __len__(self) -> int:
        return len(self.masks)

    def ids(self, i: int) -> np.ndarray:
        return self.masks.input_ids(i) if self.in_use[i] else self.placeholder

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        used = bool(self.in_use[i])
        return {"input_ids": self.ids(i), "mask_pos": int(self.masks.mask_pos[i]) if used else 0,
                "mask_label": float(self.masks.label[i]) if used else 0.0}

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def token_ids(self) -> "TokenIds":
        return TokenIds(self)


class TokenIds:
    """Every sample's input_ids (a sequence, for the text cache: `setup_model`'s token_ids)."""

    def __init__(self, items: MaskedItems):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.items.ids(i)


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path  # final/
    epochs_done: int
    last_row: dict[str, float]
    samples: int  # samples pretrained on
    samples_without_words: int  # selected samples left out: their text has no word to mask
    seed: int = 0  # the pretraining seed (train.seed)


def pretrain_identity(store_path: str | Path, cfg: RunConfig, splits: Sequence[str] | None = None) -> dict:
    """What a pretraining run directory is tied to (`kebr_core.runs`): the configuration completed from
    the store, the store's fingerprint and the splits pretrained on."""
    cfg = RunConfig.from_dict(cfg.to_dict())
    configure_from_store(cfg, FeatureStore(store_path))
    return run_identity.run_identity(cfg, "pretrain", run_identity.data_fingerprint(store_path),
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
    require(cfg.train.report_to)
    store = FeatureStore(store_path)
    selected = store.indices(list(splits) if splits is not None else None)
    if len(selected) == 0:
        where = f"in split(s) {', '.join(splits)}" if splits is not None else "at all"
        raise KebrError(f"Store {store_path} holds no samples {where} to pretrain on.")
    configure_from_store(cfg, store)
    check_model_size(cfg)  # before the run folder is touched (build_model checks again)
    refuse_unsupported(cfg)
    info, device = init_distributed(resolve_device(cfg.train.device))
    check_nodes_agree(info, run_dir, store_path, cfg.to_dict())
    with runs.claim_run(run_dir, enabled=info.is_main):  # one job at a time in a run
        resume = resume or resume_if_possible
        latest = checkpoints.latest_checkpoint(run_dir) if resume and not force else None
        if resume and latest is None and not resume_if_possible and not force:
            raise KebrError(f"Nothing to resume in {run_dir}: it holds no checkpoint (pass --resume-if-possible to "
                            "start afresh when there is none).")
        # Checked before anything is written: a crafted state is refused with the run left as it was.
        state = checkpoints.load_trainer_state(latest, max_epoch=cfg.train.epochs) if latest is not None else None
        # a mid-epoch checkpoint's place in its epoch (None: an epoch's end), checked here too
        position = EpochPosition.from_state(state, str(latest / runs.TRAINER_STATE)) if state is not None else None

        # Masking is seeded per store index, so it is done once here and the masked texts never change;
        # with the random word redrawn per epoch, the texts without a lexicon word are masked anew each epoch.
        tokenizer = load_tokenizer(cfg.model.text_model)
        lexicon = load_lexicon()
        per_epoch = cfg.train.random_word == "per-epoch"

        def mask_for(epoch: int | None) -> PackedMasks:  # flat arrays: a few bytes a clip (issue 30)
            return mask_packed(store.texts, tokenizer, lexicon, cfg.model.max_text_len, seed=cfg.train.seed, epoch=epoch)

        masked = mask_for(None)
        used = selected[masked.has_words[selected]]
        if len(used) == 0:
            raise KebrError(f"No sample of {store_path} selected for pretraining has a word in its transcript, "
                            "so there is no word to mask.")
        without_words = len(selected) - len(used)
        # On rank 0; a refused folder stops every rank with its sentence (`on_main`), none waits in a barrier.
        on_main(info, lambda: run_identity.prepare_run_dir(
            run_dir, pretrain_identity(store_path, cfg, splits), resume=resume, force=force,
            may_differ=("train.epochs",) if resume else (),
            extra={"store": str(store_path), "world_size": info.world, "samples": len(used),
                   "samples_without_words": without_words}))
        seed_everything(cfg.train.seed)
        # Samples outside `used` keep a placeholder ([CLS] [SEP], never read: the Subset leaves them out) so
        # the dataset and the text cache stay indexed by store index.
        placeholder = np.asarray(tokenize_plain([""], tokenizer, cfg.model.max_text_len)[0], dtype=np.int32)
        in_use = np.zeros(len(store), dtype=bool)
        in_use[used] = True

        def encode(masks: PackedMasks) -> "MaskedItems":
            return MaskedItems(masks, in_use, placeholder)

        def subset(encoded: "MaskedItems") -> Subset:
            return Subset(StoreDataset(store, split=None, text_encoder=lambda texts: encoded), used)

        encoded = encode(masked)
        dataset = subset(encoded)
        collate = Collator.from_config(cfg.model, tokenizer.pad_token_id)
        random_word = used[~masked.from_lexicon[used]]  # what a per-epoch redraw changes

        setup = setup_model(cfg, device, "pretrain", token_ids=encoded.token_ids(),
                            cache_dir=run_dir / runs.TEXT_CACHE, progress=progress)
        model, frozen, cache, opt = setup.model, setup.frozen, setup.cache, setup.optimizer

        start_epoch = 1
        if latest is not None and state is not None:
            # Loaded to the CPU (a run checkpointed on a GPU resumes anywhere); Adam moves its state to the
            # parameters' device, and the CPU copy is dropped with `state`.
            checkpoints.load_checkpoint_weights(model, latest)
            opt.load_state_dict(state["optimizer"])
            start_epoch = state["epoch"] + (0 if position is not None else 1)
            del state
        net = data_parallel(model, info)
        log = epoch_logger(run_dir / runs.METRICS, cfg.to_dict(), "pretrain", cfg.train.seed, start_epoch) if info.is_main else None
        payload = checkpoints.checkpoint_payload(cfg, include_encoder=not frozen)

        def save(epoch: int, weights: dict, optimizer: dict) -> None:
            if info.is_main:
                checkpoints.save_resume_checkpoint(run_dir, epoch, weights, payload, {"optimizer": optimizer},
                                                   keep=cfg.train.keep_checkpoints)
            barrier(info)

        epoch = saved = start_epoch - 1
        row: dict = {}
        loaders = RunLoaders(loader_workers(cfg.train.workers, device), device)  # workers start once per run
        snapshot: tuple[int, dict, dict] | None = None  # the state at the end of the last epoch not on disk

        def save_position(at: EpochPosition) -> None:  # a mid-epoch checkpoint (rank 0; `kebr_core.resume`)
            checkpoints.save_resume_checkpoint(run_dir, at.epoch, checkpoints.model_weights(model, not frozen), payload,
                                               {"optimizer": opt.state_dict()} | at.to_state(), keep=cfg.train.keep_checkpoints,
                                               step=at.step)

        step_checkpoints = StepCheckpoints(cfg.train.checkpoint_every_steps, cfg.train.checkpoint_every_minutes,
                                           save_position, info)
        try:
            for epoch in range(start_epoch, cfg.train.epochs + 1):
                if per_epoch:  # every epoch's draw is a function of (seed, epoch): a resumed run draws the same
                    encoded = encode(mask_for(epoch))
                    dataset = subset(encoded)
                    if cache is not None and len(random_word):  # only the random words changed: re-encode those
                        cache.replace(random_word, build_text_cache(
                            model.encoder, [encoded.ids(i) for i in random_word], device))
                row = train_epoch(net, dataset, collate, cache, opt, cfg, device, epoch, task="pretrain", frozen=frozen,
                                  info=info, seed=cfg.train.seed, progress=progress, loaders=loaders,
                                  position=position if epoch == start_epoch else None, checkpoints=step_checkpoints)
                if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs:
                    save(epoch, checkpoints.model_weights(model, not frozen), opt.state_dict())
                    saved, snapshot = epoch, None
                elif info.is_main:
                    # Kept in memory so that Ctrl-C at any later moment saves this epoch's end exactly
                    # (the random streams are seeded per epoch: `seed_epoch`), never a half-done step.
                    weights = {k: v.clone() for k, v in checkpoints.model_weights(model, not frozen).items()}  # not views
                    snapshot = (epoch, weights, copy.deepcopy(opt.state_dict()))
                if log is not None:
                    log.log_dict(row, epoch)
                progress("pretrain", epoch, cfg.train.epochs, row)
        except KeyboardInterrupt as interrupt:
            if step_checkpoints.interrupted(interrupt):  # saved inside the epoch in progress: newer than any epoch end
                raise
            if info.is_main and snapshot is not None and snapshot[0] > saved and snapshot[0] >= step_checkpoints.newest_epoch():
                checkpoints.save_resume_checkpoint(run_dir, snapshot[0], snapshot[1], payload, {"optimizer": snapshot[2]},
                                                   keep=cfg.train.keep_checkpoints)
            raise
        finally:
            loaders.close()
        final = run_dir / runs.FINAL
        if info.is_main:
            trained_on = {"data": run_identity.data_fingerprint(store_path), "splits": list(splits) if splits is not None else None,
                          "samples": len(used)}
            save_pretrained(model, final, cfg, include_encoder=not frozen, extra={"trained_on": trained_on},
                            tokenizer=tokenizer, run_dir=run_dir)
            log.log_config(cfg.to_dict(), row, epoch)
            log.close()
        barrier(info)
        return PretrainResult(run_dir=run_dir, checkpoint=final, epochs_done=epoch, last_row=row, samples=len(used),
                              samples_without_words=without_words, seed=cfg.train.seed)


def pretrain_each_seed(
    store_path: str | Path,
    run_dir: str | Path,
    cfg: RunConfig,
    pretrain_seeds: Sequence[int] | None = None,
    *,
    splits: Sequence[str] | None = None,
    resume: bool = False,
    resume_if_possible: bool = False,
    force: bool = False,
    progress: ProgressFn = no_progress,
) -> list[PretrainResult]:
    """`pretrain` once per pretraining seed (`train.seed` of each run; None: `cfg.train.seed` alone) into
    `runs.pretrain_seed_runs(run_dir, seeds)`: `run_dir` itself for one seed, run_dir/pseed-S for several.
    With several seeds `resume` continues each seed's run where it has a checkpoint and starts the others
    (a seed that had not saved one yet when the run stopped)."""
    seeds = [cfg.train.seed] if pretrain_seeds is None else [int(s) for s in pretrain_seeds]
    if len(set(seeds)) != len(seeds) or not seeds:
        raise KebrError(f"The pretraining seeds must be distinct and at least one, not {seeds}.")
    several = len(seeds) > 1
    results = []
    for seed, seed_run in runs.pretrain_seed_runs(run_dir, seeds):
        seed_cfg = RunConfig.from_dict(cfg.to_dict())
        seed_cfg.train.seed = seed
        results.append(pretrain(store_path, seed_run, seed_cfg, splits=splits, resume=resume and not several,
                                resume_if_possible=resume_if_possible or (resume and several), force=force,
                                progress=progress))
    return results

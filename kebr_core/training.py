"""Pieces every training recipe shares: devices, seeds, the frozen-text cache, one training epoch.

Run directories and checkpoints: `kebr_core.runs`.

The recipes (`kebr_core/recipes/`) stay one readable loop each by calling these.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from kebr_core.config import RunConfig
from kebr_core.epoch_metrics import BALANCE_SUMS, EPOCH, SECONDS, TRAINING_NAMES
from kebr_core.errors import KebrError
from kebr_core.model import encoder_attention_mask
from kebr_core.threads import usable_cpus  # the CPUs this process may use (its affinity), one home with --threads

# progress callback: (stage, done, total, info) – the CLI renders it, kebr_core never prints. Two kinds
# of event: a finished unit of a stage ("pretrain" epoch 3 of 20, "seed 0" epoch 2 of 10, "seeds" 1 of 5),
# whose info holds its metrics row; and the batches of the epoch in progress, stage BATCH_STAGE with
# info {"epoch": e}, which carry no metrics (reading a loss would cost a device sync per step).
ProgressFn = Callable[[str, int, int, dict[str, Any]], None]
BATCH_STAGE = "batch"


def no_progress(stage: str, done: int, total: int, info: dict[str, Any]) -> None:
    return None


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda when available, else cpu; an explicit `cuda` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KebrError("--device cuda was asked for, but PyTorch sees no CUDA GPU on this machine.")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise KebrError(f"Unknown device '{name}': expected auto, cpu or cuda.")
    return torch.device(name)


def autocast(device: torch.device, bf16: bool | None):
    """bf16 autocast on CUDA by default (docs/design.md §6); opt-in on CPU."""
    use = (device.type == "cuda") if bf16 is None else bf16
    if not use:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def adam(groups: list[dict[str, Any]], weight_decay: float, fused: bool = False) -> torch.optim.Adam:
    """Adam over parameter groups, as both recipes use it (the per-parameter loop). fused=True updates
    every parameter in one kernel per step: the same update to float rounding and ~5× faster on a CPU,
    1.14× per pretraining step (bench/roofline.py), but the rounding changes training trajectories
    (the full demo's held-out signs went from 6 of 6 to 5 of 6), so it is not the default."""
    return torch.optim.Adam(groups, weight_decay=weight_decay, fused=fused)


def loader_workers(workers: int | None, device: torch.device) -> int:
    """DataLoader worker processes: `workers` when given; None (auto) is up to 4 per process on CUDA,
    so HDF5 reads and collation overlap the GPU's compute, and 0 on the CPU, where workers would only
    take cores from the model's own threads."""
    if workers is not None:
        return workers
    if device.type != "cuda":
        return 0
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun
    return min(4, max(1, usable_cpus() // processes_here - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed the random streams of one epoch (dropout, DataLoader workers) from (seed, epoch, rank).

    The streams are a function of where training is, not of what ran before: a resumed run (after a
    kill, Ctrl-C, on another device) draws what the uninterrupted run drew, and under DDP every rank
    has its own stream without any RNG state in the checkpoint. On CPU this makes resume bit for bit;
    on CUDA it is bit for bit only with deterministic kernels (atomic adds in index_add_ and SDPA's
    backward reorder sums otherwise)."""
    words = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    value = int(words[0]) << 32 | int(words[1])
    random.seed(value)
    np.random.seed(int(words[0]))
    torch.manual_seed(value & (2**63 - 1))


def remove_modality(batch: dict[str, Tensor], modality: str, how: str, samples: Tensor | None = None) -> dict[str, Tensor]:
    """The batch with `modality` ("audio" or "vision") zeroed (features 0, frames kept) or absent (no valid
    frame). samples (B,) bool: remove it from these samples only (None: from every sample). The probe of
    `recipes.finetune` removes a stream at test; modality dropout removes it from chosen training samples."""
    if how not in ("zeroed", "absent"):
        raise ValueError(f"how must be 'zeroed' or 'absent', not {how!r}")
    out = dict(batch)
    features, mask = batch[modality], batch[f"{modality}_mask"]  # (B, L, d), (B, L)
    if samples is None:
        samples = torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
    out[modality] = features.masked_fill(samples.view(-1, 1, 1), 0)
    if how == "absent":
        out[f"{modality}_mask"] = mask & ~samples.view(-1, 1)
    return out


def modality_dropout_mask(index: Tensor, p: float, seed: int, epoch: int) -> Tensor:
    """(B,) bool: which samples of a batch lose their stream this epoch under modality dropout with
    probability p. index (B,): the samples' store-order numbers. Each sample's draw is a function of
    (seed, epoch, sample) alone, not of the batch it lands in, so it is the same under resume, any
    number of DDP ranks and any batching, and it leaves the epoch's other random streams untouched."""
    draws = [np.random.SeedSequence([seed, epoch, int(i), 0x6D64]).generate_state(1)[0] / 2.0**32 for i in index.tolist()]
    return torch.tensor(draws, dtype=torch.float64) < p


def move(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


# ───────────────────────── frozen text encoder: compute once, gather per batch ─────────────────────────


@dataclass
class TextCache:
    """The frozen encoder's last hidden states of every sample, stored flat (docs/design.md §6).

    flat (T, dt) holds all samples' token states back to back; sample i is flat[offsets[i]:offsets[i+1]].
    `gather` builds a padded batch with index arithmetic (no per-sample Python loop).
    """

    flat: Tensor  # (T, dt)
    offsets: Tensor  # (N + 1,) long
    dt: int

    def gather(self, index: Tensor, length: int) -> Tensor:
        """index (B,) store-order sample numbers, length = padded Lt of the batch → (B, Lt, dt)."""
        index = index.to(self.offsets.device)
        start = self.offsets[index]  # (B,)
        n = self.offsets[index + 1] - start  # (B,)
        pos = torch.arange(length, device=start.device)
        valid = pos.unsqueeze(0) < n.unsqueeze(1)  # (B, Lt)
        rows = (start.unsqueeze(1) + pos.unsqueeze(0)).clamp(max=self.flat.shape[0] - 1)
        out = self.flat[rows].float()  # (B, Lt, dt); a float16/bfloat16 cache (`text_cache`) is read as float32
        return out * valid.unsqueeze(-1).to(out.dtype)

    def replace(self, index: Sequence[int], other: "TextCache") -> None:
        """Overwrite samples `index` (store order) with `other`'s samples 0..len(index)−1, which must
        have the same lengths (a redrawn random word changes which pieces are masked, not how many)."""
        rows = [torch.arange(int(self.offsets[i]), int(self.offsets[i + 1])) for i in index]
        if rows:
            self.flat[torch.cat(rows).to(self.flat.device)] = other.flat.to(self.flat.dtype)


@torch.no_grad()
def encode_texts(
    encoder: torch.nn.Module,
    token_ids: Sequence[Sequence[int]],
    device: torch.device,
    batch_size: int = 64,
    progress: ProgressFn = no_progress,
):
    """Run the frozen encoder once over every (already masked) text, batching similar lengths together.
    Yields (samples, lengths, hidden): the batch's sample numbers (B,), their token counts (B,) and the
    last hidden states (B, L, dt) float32 on the CPU. The one encoding loop of the in-memory cache and
    the disk cache (`kebr_core.text_cache`): the same batches, so the same numbers."""
    encoder.eval()
    n = len(token_ids)
    lengths = np.array([len(t) for t in token_ids], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")  # similar lengths share a batch: little padding
    for b0 in range(0, n, batch_size):
        idx = order[b0 : b0 + batch_size]
        L = int(lengths[idx].max())
        ids = torch.zeros(len(idx), L, dtype=torch.long)
        mask = torch.zeros(len(idx), L, dtype=torch.bool)
        for r, i in enumerate(idx):  # once per sample for the whole run, not per epoch
            ids[r, : lengths[i]] = torch.as_tensor(np.asarray(token_ids[i], dtype=np.int64))
            mask[r, : lengths[i]] = True
        hidden = encoder(input_ids=ids.to(device), attention_mask=encoder_attention_mask(encoder, mask.to(device)))
        yield idx, lengths[idx], hidden.last_hidden_state.float().cpu()
        progress("encode text", min(b0 + batch_size, n), n, {})


def build_text_cache(
    encoder: torch.nn.Module,
    token_ids: Sequence[Sequence[int]],
    device: torch.device,
    batch_size: int = 64,
    progress: ProgressFn = no_progress,
) -> TextCache:
    """The in-memory cache of every text's states (`encode_texts`)."""
    n = len(token_ids)
    lengths = np.array([len(t) for t in token_ids], dtype=np.int64)
    per_sample: list[Tensor | None] = [None] * n
    for idx, counts, hidden in encode_texts(encoder, token_ids, device, batch_size, progress):
        for r, i in enumerate(idx):
            per_sample[i] = hidden[r, : counts[r]]
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.as_tensor(np.cumsum(lengths))
    flat = torch.cat(per_sample, 0) if n else torch.zeros(0, encoder.config.hidden_size)  # type: ignore[arg-type]
    return TextCache(flat=flat.to(device), offsets=offsets.to(device), dt=flat.shape[-1])


# ───────────────────────── what a checkpoint remembers of its data ─────────────────────────


def store_features(store) -> dict[str, Any]:
    """What a checkpoint must remember of its training data to score new videos the same way."""
    keys = ("audio_features", "vision_features", "audio_rate_hz", "vision_fps", "extractor")
    return {"features": {k: store.attrs.get(k) for k in keys}}



class NonFiniteLoss(KebrError):
    """The loss became NaN or infinite (`check_finite`): a setting (a learning rate) the run cannot train
    with. `kebr tune` records such a trial as failed and goes on."""


def check_finite(bad_steps: Tensor, epoch: int) -> None:
    """Stop on a NaN/inf loss, naming the epoch and its first bad batch.

    bad_steps (S,) counts, for each of the epoch's S steps, the ranks whose loss was not finite. The
    step only sets a flag on the device (no host sync); the flags travel in the epoch's one all-reduce,
    so every rank sees the same counts and stops with the same sentence."""
    bad = torch.nonzero(bad_steps).flatten().tolist()
    if bad:
        raise NonFiniteLoss(
            f"The loss became NaN or infinite at epoch {epoch}, batch {bad[0]} ({len(bad)} of the epoch's "
            f"{len(bad_steps)} batches): lower the learning rate or check the input features for NaN/inf values."
        )


def balance_sums(abs_err: Tensor, mcc, weight: Tensor | None = None) -> Tensor:
    """Per-batch sums for an epoch's metrics row, without a host sync. Returns (len(BALANCE_SUMS),) = (7,):
    Σ|pred − y|, B, Σf_i and Σc_a, Σc_v, Σ|θ_a − θ_v| over the samples that have both streams
    (MCC's `valid`), and their count. weight (B,): 1 for real samples (the default), 0 for DDP
    padding (`EpochBatches.weights`), which counts nowhere."""
    if weight is None:
        weight = torch.ones_like(abs_err, dtype=torch.float32)
    valid = mcc.valid.float() * weight
    c_a, c_v = mcc.c_a.float(), mcc.c_v.float()
    dtheta = (torch.arccos(c_a.clamp(-1, 1)) - torch.arccos(c_v.clamp(-1, 1))).abs()
    return torch.stack([
        (abs_err.detach().float() * weight).sum(), weight.sum(), (mcc.per_sample.detach().float() * valid).sum(),
        (c_a * valid).sum(), (c_v * valid).sum(), (dtheta * valid).sum(), valid.sum(),
    ])


def epoch_row(epoch: int, sums: Tensor, seconds: float, mcc_weight: float, prefix: str = "") -> dict[str, float]:
    """An epoch's metrics.csv row from the summed `balance_sums` of its batches (one host sync), its columns
    `epoch_metrics.training_columns(prefix)`: task_l1 and mcc are epoch means, loss = task_l1 + λ·mcc,
    cosines and |Δθ| average valid samples."""
    total = dict(zip(BALANCE_SUMS, sums.tolist()))
    n, n_valid = max(total["samples"], 1.0), max(total["mcc_samples"], 1.0)
    task, mcc = total["abs_err"] / n, total["mcc"] / n_valid
    values = {"loss": task + mcc_weight * mcc, "task_l1": task, "mcc": mcc, "cos_a": total["cos_a"] / n_valid,
              "cos_v": total["cos_v"] / n_valid, "abs_dtheta": total["abs_dtheta"] / n_valid}
    return {EPOCH: epoch, **{prefix + name: values[name] for name in TRAINING_NAMES}, SECONDS: round(seconds, 3)}


def item_lengths(dataset) -> np.ndarray | None:
    """(N, 3) text/audio/vision lengths of a StoreDataset or a Subset of one; None for other datasets."""
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        parent = item_lengths(dataset.dataset)
        return None if parent is None else parent[np.asarray(dataset.indices)]
    return dataset.lengths() if hasattr(dataset, "lengths") else None


def bucket_sizes(dataset, cfg: RunConfig) -> np.ndarray | None:
    """(N,) per-sample padded cost for EpochBatches' length bucketing: each stream's length relative to
    its cap, summed, so batches of similar samples pad little. None when bucketing is off or the
    dataset has no lengths."""
    lengths = item_lengths(dataset)
    if not cfg.train.length_bucketing or lengths is None:
        return None
    caps = np.array([cfg.model.max_text_len, cfg.model.max_audio_len, cfg.model.max_vision_len], np.float64)
    return (np.minimum(lengths, caps) / caps).sum(axis=1)


def train_epoch(
    net: torch.nn.Module,
    dataset,
    collate,
    cache: TextCache | None,
    opt: torch.optim.Optimizer,
    cfg: RunConfig,
    device: torch.device,
    epoch: int,
    *,
    task: str,
    frozen: bool,
    info,
    seed: int,
    prefix: str = "",
    progress: ProgressFn = no_progress,
    loaders=None,
    position=None,
    checkpoints=None,
) -> dict[str, float]:
    """One epoch of L = L1(pred, y) + λ·L_mcc (Eq. 16–17): y is the masked word's score when
    pretraining, the utterance label when fine-tuning. Fine-tuning with `train.modality_dropout` = p
    removes `train.dropped_modality` (absent: no valid frame) from each training sample with
    probability p (`modality_dropout_mask`). `net` may be DDP-wrapped; `info` is the DistInfo.
    `progress` gets a BATCH_STAGE event after every batch. Returns the epoch's metrics row (identical on
    every rank).

    A step never waits for the device: its only communication is `global_mean`'s all-reduces, and a
    non-finite loss is flagged on the device and checked once, at the end of the epoch (`check_finite`).
    Batches are DDP padded where a global batch has fewer samples than ranks (`EpochBatches`). loaders: the
    run's `RunLoaders` (its workers start once per run); None: a loader, and its workers, for this epoch.

    position: a `resume.EpochPosition` to continue the epoch from (its steps skipped, its sums and random
    state restored); checkpoints: a `resume.StepCheckpoints` told after every step. Each step runs with
    Ctrl-C/SIGTERM held (`resume.held_steps`): an interrupt lands between steps."""
    from kebr_core.distributed import EpochBatches, all_reduce_sum, global_mean
    from kebr_core.loaders import RunLoaders
    from kebr_core.resume import SkipBatches, held_steps, set_rng_state

    model = net.module if hasattr(net, "module") else net
    seed_epoch(seed, epoch, info.rank)
    batches = EpochBatches(len(dataset), cfg.train.batch_size, seed, epoch, info, sizes=bucket_sizes(dataset, cfg))
    first = position.step if position is not None else 0  # the steps a mid-epoch checkpoint had done
    loaders = loaders or RunLoaders(loader_workers(cfg.train.workers, device), device)
    loader = loaders.train(dataset, collate, SkipBatches(batches, first))
    target = "mask_label" if task == "pretrain" else "label"
    net.train()
    if frozen:
        model.encoder.eval()  # no dropout in a frozen encoder: its cached outputs stay exact
    t0 = time.perf_counter()
    # [:k] the epoch's balance_sums (k = len(BALANCE_SUMS)), [k:] one non-finite-loss flag per step: summed over
    # ranks at the end of the epoch by one all-reduce, then read by the host once (no sync inside the step).
    k = len(BALANCE_SUMS)
    sums = torch.zeros(k + len(batches), device=device)
    dropout_p = cfg.train.modality_dropout if task == "finetune" else 0.0  # fine-tuning's training steps only
    steps = iter(loader)  # draws the workers' base seed: before a saved random state is put back
    if position is not None:
        sums = position.sums_for(info.rank, len(sums), device)
        set_rng_state(position.rng_for(info.rank, info.world))
    held = held_steps(enumerate(steps, start=first))
    try:
        for step, batch in held:
            if dropout_p > 0:  # chosen on the host from the CPU batch: no device sync
                dropped = modality_dropout_mask(batch["index"], dropout_p, seed, epoch)
                batch = remove_modality(batch, cfg.train.dropped_modality, "absent", samples=dropped)
            batch = move(batch, device)
            weight = batches.weights(step, device)  # 0 for the padding of a batch smaller than the world
            hidden = cache.gather(batch["index"], batch["input_ids"].shape[1]) if cache is not None else None
            with autocast(device, cfg.train.bf16):
                out = net(batch, task=task, text_hidden=hidden)
            abs_err = (out.pred.float() - batch[target]).abs()
            task_loss = global_mean(abs_err, weight, info)
            mcc_loss = global_mean(out.mcc.per_sample.float(), out.mcc.valid.float() * weight, info)
            loss = task_loss + cfg.mcc.weight * mcc_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
            opt.step()
            with torch.no_grad():
                sums[:k] += balance_sums(abs_err, out.mcc, weight)
                sums[k + step] = (~torch.isfinite(loss.detach())).float()
            if checkpoints is not None:
                checkpoints.after_step(epoch, step + 1, len(batches), sums)
            progress(BATCH_STAGE, step + 1, len(batches), {"epoch": epoch})
    finally:
        held.close()  # a step that failed: its held signals go back to their handlers
    totals = all_reduce_sum(sums, info).cpu()  # the epoch's one host sync
    check_finite(totals[k:], epoch)
    return epoch_row(epoch, totals[:k], time.perf_counter() - t0, cfg.mcc.weight, prefix)

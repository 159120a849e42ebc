"""Data-parallel training with torch.distributed (DDP), launched by `torchrun` (docs/design.md §6).

The recipes run unchanged in one process (world size 1). Under torchrun every rank:
- takes its share of each *global* batch: the same shuffled batches a single process would see,
  split evenly across ranks (`EpochBatches`), so 2 processes reproduce 1 process up to float error;
- scales its loss so that DDP's gradient average equals the gradient of the global-batch mean
  (`global_mean`), also when the last batch does not split evenly;
- never gets an empty batch: a global batch smaller than the world size (the last one, e.g. MOSI's
  1,284 training samples in batches of 32 on 8 GPUs) is padded with repeats of its own samples that
  weigh 0 in every mean, so the gradient and the metrics are still those of the real samples;
- evaluates a slice of each split on each rank (`rank_slice`) and gathers the predictions (`gather_predictions`);
- writes files only on rank 0.
Backend: NCCL on CUDA, gloo on CPU.

On several machines (torchrun --nnodes) every rank reads the store and the run folder by path, so they
must be the same on every node: `check_nodes_agree` verifies that right after the process group forms,
and stops every rank with one sentence when a node sees another store, other settings or no shared folder.
"""

from __future__ import annotations

import atexit
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from kebr_core.errors import EveryRankError, KebrError
from kebr_core.run_identity import data_fingerprint, identity_differences

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun set up (WORLD_SIZE > 1); a no-op in a single process. The group is
    destroyed when the process exits (NCCL warns otherwise). More processes on a machine than it has GPUs
    is refused on every rank with one sentence, before any of them joins (not CUDA's invalid ordinal)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        here, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", info.local_rank + 1)), torch.cuda.device_count()
        if here > gpus:
            raise EveryRankError(f"--nproc-per-node {here} asks for one GPU per process, but this machine has {gpus} "
                            f"GPU(s): use --nproc-per-node {gpus} or fewer (or --device cpu).")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave_group)
    return info, device


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def data_parallel(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """`model` wrapped in DDP under torchrun, else itself. Buffers are not broadcast before each forward
    (broadcast_buffers=False, one collective less per step): the model's only buffers are the text
    encoder's constant position and token-type ids, which every rank builds alike (no running statistics;
    tests/test_ddp_jobs.py checks that a model has no other)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, broadcast_buffers=False) if info.enabled else model


CONSTANT_BUFFERS = ("position_ids", "token_type_ids")  # the only buffers `data_parallel` may leave unbroadcast


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def on_main(info: DistInfo, work: Callable[[], T]) -> T:
    """Run `work` on rank 0 alone and give its result to every rank (one broadcast). A KebrError it raises
    is raised on every rank with the same sentence, so no rank is left waiting in a later collective
    (e.g. a barrier) while rank 0 stops on a refused run folder; any other error stops every rank too,
    naming it. In one process: work()."""
    if not info.enabled:
        return work()
    box: list[Any] = [None, None]
    if info.is_main:
        try:
            box[0] = work()
        except KebrError as e:
            box[1] = str(e)
        except Exception as e:
            box[1] = f"rank 0 failed: {e!r}"
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise EveryRankError(box[1])
    return box[0]


def main_holds_lock(info: DistInfo) -> Callable[[bool], bool] | None:
    """For `shards.locked(path, enabled=info.is_main, agree=…)`: whether rank 0 got the lock, broadcast to
    every rank after each try, so that a DDP job waits for a lock held by another job as one, and every
    rank then makes the decision rank 0 makes under it (`on_main`). None in one process (a plain lock)."""
    if not info.enabled:
        return None

    def agree(got: bool) -> bool:
        box = [got]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    return agree


def refuse_unsupported(cfg: Any) -> None:
    """Settings whose result would depend on the number of processes, refused on every rank alike before
    any joins the group (torchrun's WORLD_SIZE): the authors' MCC alignment reads each batch's padding, and
    a rank pads its share of a global batch to its own longest sample, not to the global batch's (so 2
    processes would not equal 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and cfg.mcc.align == "authors":
        raise EveryRankError("--mcc-align authors cannot run on several processes (its cosines count each process's own "
                        "padding, so the result would depend on the number of processes): use --nproc-per-node 1 "
                        "or another --mcc-align.")


NONCE_PREFIX = ".kebr-nonce-"
SHARED_FOLDER = "the output folder must be on a file system that all nodes share"


def check_nodes_agree(info: DistInfo, run_dir: str | Path, store_path: str | Path, settings: dict[str, Any]) -> None:
    """Stop every rank with the same sentence unless all ranks see the same store (its size in bytes and
    content fingerprint; the path may differ), the same settings (`settings`, a RunConfig's dict) and
    the same output folder. The folder test: rank 0 writes a random token into `run_dir`, every other
    rank reads it back there; rank 0 removes the file afterwards (it is no run output). One broadcast
    and one all-gather, so a rank that fails never leaves the others waiting. A no-op in one process."""
    if not info.enabled:
        return
    run_dir = Path(run_dir)
    mine: dict[str, Any] = {"host": socket.gethostname(), "folder": str(run_dir.resolve()), "error": None}
    token, nonce = None, None
    if info.is_main:
        token = secrets.token_hex(16)
        nonce = run_dir / f"{NONCE_PREFIX}{token}"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            nonce.write_text(token)
        except OSError as e:
            mine["error"] = f"rank 0 on {mine['host']} cannot write into the output folder {run_dir} ({e.strerror})."
    box = [token]
    dist.broadcast_object_list(box, src=0)  # after rank 0 wrote the file
    try:
        try:
            seen = (run_dir / f"{NONCE_PREFIX}{box[0]}").read_text()
        except OSError:
            seen = None
        mine["sees_folder"] = seen == box[0]
        mine["store"] = _store_identity(store_path)
        mine["settings"] = settings
        everyone: list[Any] = [None] * info.world
        dist.all_gather_object(everyone, mine)
    finally:
        if nonce is not None:
            nonce.unlink(missing_ok=True)
    problems = [p for rank, other in enumerate(everyone)
                if (p := _disagreement(rank, other, everyone[0])) is not None]
    if problems:
        more = f" ({len(problems) - 1} more rank(s) disagree too.)" if len(problems) > 1 else ""
        raise EveryRankError(problems[0] + more)


def _store_identity(store_path: str | Path) -> dict[str, Any]:
    """What must match across nodes about the store: bytes and content (not the path, which may differ)."""
    try:
        size = os.path.getsize(store_path)
    except OSError:
        return {"missing": str(store_path)}
    return {k: v for k, v in data_fingerprint(store_path).items() if k != "store"} | {"bytes": size}


def _disagreement(rank: int, other: dict, main: dict) -> str | None:
    """One sentence saying how rank `rank` differs from rank 0, or None."""
    where = f"rank {rank} on {other['host']}"
    if other["error"] is not None:
        return other["error"]
    if not other["sees_folder"]:
        return (f"{where} does not see what rank 0 on {main['host']} wrote into the output folder {other['folder']}: "
                f"{SHARED_FOLDER}.")
    if "missing" in other["store"]:
        return f"{where} cannot read the store {other['store']['missing']}: every node must see the same store."
    if other["store"] != main["store"]:
        keys = sorted(k for k in set(other["store"]) | set(main["store"]) if other["store"].get(k) != main["store"].get(k))
        return f"{where} reads another store than rank 0 (differs in {', '.join(keys)}): every node must see the same store."
    diffs = identity_differences(main["settings"], other["settings"])
    if diffs:
        return (f"{where} was started with other settings than rank 0: {'; '.join(diffs)}; start every node with "
                "the same command.")
    return None


class EpochBatches(Sampler[list[int]]):
    """This rank's part of every global batch of one epoch (a DataLoader `batch_sampler`).

    The global order is a permutation drawn from (seed, epoch) alone, so a resumed run and a run on any
    number of processes see the same global batches. Rank r takes positions r, r + world, … of each;
    a batch smaller than the world size is padded with repeats weighted 0 (`weights`), so no rank
    is ever given an empty batch.

    With `sizes` (a per-sample cost such as its padded length), batches are length-bucketed: the shuffled
    samples are cut into pools of `pool` batches, each pool is sorted by size and cut into batches, and
    the batch order is shuffled. A batch then pads to a length close to its own samples' instead of
    nearly the caps (measured on MOSI-like data: ~1.6× faster pretraining epochs, ~2× fine-tuning).
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, info: DistInfo, shuffle: bool = True,
                 sizes: np.ndarray | None = None, pool: int = 50):
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen).numpy() if shuffle else np.arange(n)
        if sizes is not None and shuffle:
            span = pool * batch_size
            order = np.concatenate([c[np.argsort(sizes[c], kind="stable")] for c in np.split(order, range(span, n, span))])
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        if sizes is not None and shuffle:
            batches = [batches[j] for j in torch.randperm(len(batches), generator=gen).tolist()]
        self.global_batches = batches
        self.info = info
        # This rank's share of each global batch and how many of its samples are real (the rest: padding).
        self.local: list[tuple[list[int], int]] = [self._share(b) for b in batches]

    def _share(self, batch: np.ndarray) -> tuple[list[int], int]:
        """Positions rank, rank + world, … of the global batch. A batch with fewer samples than ranks is
        first padded to `world` samples by repeating its own, so every rank gets one; positions past
        the real samples are padding, and they come last in a rank's share."""
        real = len(batch)
        padded = batch[np.arange(max(real, self.info.world)) % real]
        positions = np.arange(self.info.rank, len(padded), self.info.world)
        return padded[positions].tolist(), int((positions < real).sum())

    def weights(self, step: int, device: torch.device | str = "cpu") -> Tensor:
        """(B,) float32 weights of this rank's batch number `step`: 1 for real samples, 0 for padding.
        Made on `device` from a count (no host-to-device copy)."""
        indices, real = self.local[step]
        return (torch.arange(len(indices), device=device) < real).float()

    def __iter__(self):
        for indices, _ in self.local:
            yield indices

    def __len__(self) -> int:
        return len(self.global_batches)


def global_mean(per_sample: Tensor, weight: Tensor, info: DistInfo) -> Tensor:
    """Σ(per_sample·weight) / Σweight over the whole global batch, as this rank's share.

    DDP averages gradients over ranks, so each rank returns world·(its sum)/(global weight); the
    average of those is exactly the global mean. One all-reduce of a scalar when distributed.
    """
    local_sum = (per_sample * weight).sum()
    total = weight.sum().detach()
    if info.enabled:
        total = total.clone()
        dist.all_reduce(total)
        return local_sum * info.world / total.clamp_min(1.0)
    return local_sum / total.clamp_min(1.0)


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t)
    return t


def rank_slice(indices: np.ndarray, info: DistInfo) -> np.ndarray:
    """This rank's contiguous slice of an index array (for evaluation; not a job's part, `kebr_core.shards`)."""
    return np.array_split(indices, info.world)[info.rank] if info.enabled else indices


def gather_predictions(parts: list[np.ndarray], info: DistInfo) -> list[np.ndarray]:
    """Concatenate each rank's arrays in rank order (every rank gets the whole result)."""
    if not info.enabled:
        return parts
    gathered: list[list[np.ndarray] | None] = [None] * info.world
    dist.all_gather_object(gathered, parts)
    return [np.concatenate([g[i] for g in gathered]) for i in range(len(parts))]  # type: ignore[index]

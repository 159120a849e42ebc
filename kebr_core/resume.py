"""Mid-epoch checkpoints and their exact resume (pretraining; docs/design.md §6).

An epoch-end checkpoint needs no random state: every epoch's streams are seeded from (seed, epoch, rank)
(`training.seed_epoch`). Inside an epoch a run is further: `EpochPosition` is what a checkpoint written
after `step` steps of epoch `epoch` adds to the trainer state, so that resuming continues bit for bit
(on CPU) where the uninterrupted run would be:

    step      the steps done in the epoch: the sampler (`distributed.EpochBatches`, a function of
              (seed, epoch)) skips that many batches (`SkipBatches`), and `EpochBatches.weights` counts on
    sums      (ranks, 7 + S) each rank's partial `balance_sums` of the epoch (`epoch_metrics.BALANCE_SUMS`)
              and its per-step non-finite flags: each rank goes on adding to its own, so the epoch's
              all-reduce adds the same float32 numbers in the same order as the uninterrupted run
    rng       the random streams after that step (torch CPU and CUDA, NumPy, Python), per rank

`StepCheckpoints` decides when (every `train.checkpoint_every_steps` steps, every
`train.checkpoint_every_minutes` minutes; both operational: they do not change what a run computes) and
on an interrupt: Ctrl-C or SIGTERM (`kebr_cli.app.stop_on_sigterm` raises KeyboardInterrupt) during a
step is held until the step is done (`held_steps`), then the position after it is saved.
Under DDP each rank's sums and random state are gathered at a checkpoint
(every rank takes part, so an interrupt there saves only the last epoch end, as before).
"""

from __future__ import annotations

import itertools
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from kebr_core.errors import KebrError
from kebr_core.epoch_metrics import BALANCE_SUMS

T = TypeVar("T")


def rng_state() -> dict[str, Any]:
    """This process's random streams as plain containers and tensors (a trainer state loads with
    weights_only=True: no NumPy arrays)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                                                       float(gauss)], "python": list(random.getstate()[1])}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class EpochPosition:
    """Where inside epoch `epoch` a run is (module docstring). rng: one `rng_state` per rank."""

    epoch: int
    step: int
    sums: Tensor  # (ranks, 7 + S) float32, each rank's; (7 + S,) in older checkpoints: the ranks' sum
    rng: list[dict[str, Any]]

    def to_state(self) -> dict[str, Any]:
        return {"position": {"sums": self.sums.cpu(), "rng": self.rng}}

    @classmethod
    def from_state(cls, state: dict[str, Any], where: str) -> "EpochPosition | None":
        """The position a trainer state holds (None: an epoch-end checkpoint). `where` names the file."""
        step = state.get("step", 0)
        if not step:
            return None
        pos = state.get("position")
        if not (isinstance(pos, dict) and isinstance(pos.get("sums"), Tensor) and isinstance(pos.get("rng"), list)
                and pos["sums"].ndim in (1, 2) and pos["sums"].shape[-1] >= len(BALANCE_SUMS) + step and pos["rng"]
                and (pos["sums"].ndim == 1 or len(pos["sums"]) == len(pos["rng"]))):
            raise KebrError(f"{where} is a mid-epoch checkpoint without its position in the epoch (sums and random "
                            "state); the run cannot be resumed from it (start it afresh with --force).")
        return cls(state["epoch"], step, pos["sums"].float(), pos["rng"])

    def sums_for(self, rank: int, length: int, device: torch.device) -> Tensor:
        """The epoch's running sums for `rank` to start from: its own (an older checkpoint's summed ones on
        rank 0, zeros elsewhere: the epoch's all-reduce adds them once). length: len(BALANCE_SUMS) + the
        epoch's steps, which must match."""
        k = len(BALANCE_SUMS)
        if self.sums.shape[-1] != length:
            raise KebrError(f"The mid-epoch checkpoint of epoch {self.epoch} was written for {self.sums.shape[-1] - k} "
                            f"steps an epoch, not {length - k}: the data or batch size changed; start afresh with --force.")
        if self.sums.ndim == 2:
            return self.sums[rank].to(device)
        return self.sums.to(device) if rank == 0 else torch.zeros(length, device=device)

    def rng_for(self, rank: int, world: int) -> dict[str, Any]:
        if len(self.rng) != world:
            raise KebrError(f"The mid-epoch checkpoint was written by {len(self.rng)} process(es), not {world}: resume it "
                            "with as many, or from an epoch-end checkpoint.")
        return self.rng[rank]


class SkipBatches(Sampler[list[int]]):
    """A batch sampler without its first `first` batches (what a mid-epoch checkpoint had done)."""

    def __init__(self, batches: Sampler[list[int]], first: int):
        self.batches, self.first = batches, first

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batches), self.first, None)

    def __len__(self) -> int:
        return max(len(self.batches) - self.first, 0)  # type: ignore[arg-type]


def held_steps(steps: Iterable[T]) -> Iterator[T]:
    """`steps`, each item's loop body run with Ctrl-C and SIGTERM held; they are delivered, to the handlers
    they had (which raise KeyboardInterrupt), when the body is done and the next item is asked for: a
    training step is never left half done (an optimiser half updated). Loading the next item is not held.
    Only in the main thread, where Python runs signal handlers; elsewhere `steps` as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield from steps
        return
    try:
        yield from _held(steps)
    except KeyboardInterrupt as e:  # raised between two steps (or while loading): the last step is whole
        e.between_steps = True  # type: ignore[attr-defined]
        raise


def _held(steps: Iterable[T]) -> Iterator[T]:
    held = (signal.SIGINT, signal.SIGTERM)
    for item in steps:
        pending: list[tuple[int, Any]] = []
        previous = {s: signal.signal(s, lambda signum, frame: pending.append((signum, frame))) for s in held}
        failed = True
        try:
            yield item
            failed = False
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for signum, frame in ([] if failed else pending):  # a failed step's error is the one to report
                handler = previous[signum]
                if callable(handler):
                    handler(signum, frame)
                elif handler == signal.SIG_DFL:
                    signal.raise_signal(signum)


class StepCheckpoints:
    """When a pretraining run writes a mid-epoch checkpoint: after every `every_steps` steps, after
    `every_minutes` minutes since the last checkpoint, and (one process) when interrupted.

    save(position) writes it (`checkpoints.save_resume_checkpoint` with step > 0; rank 0). `info`: the DistInfo."""

    def __init__(self, every_steps: int, every_minutes: float, save: Callable[[EpochPosition], None], info):
        self.every_steps, self.every_seconds, self.save, self.info = every_steps, every_minutes * 60, save, info
        self.last = time.monotonic()
        self.saved: tuple[int, int] | None = None  # (epoch, step) of the last mid-epoch checkpoint written
        self.done: tuple[int, int, int, Tensor] | None = None  # (epoch, step, steps, sums) after the last step

    def _due(self, step: int) -> bool:
        due = bool(self.every_steps) and step % self.every_steps == 0
        if self.every_seconds and not due:
            due = time.monotonic() - self.last >= self.every_seconds
            if self.info.enabled:  # the clocks of the ranks differ: one decides for all (a sync per step)
                flag = torch.tensor([float(due)], device=self._device)
                torch.distributed.broadcast(flag, 0)
                due = bool(flag.item())
        return due

    def after_step(self, epoch: int, step: int, total: int, sums: Tensor) -> None:
        """Called after each step of an epoch of `total` steps (`step` done), with the epoch's running sums;
        the last step is the epoch's end, which the recipe saves by its own rule."""
        self._device, self.done = sums.device, (epoch, step, total, sums)
        if step < total and self._due(step):
            self._write(epoch, step, sums)

    def interrupted(self, error: BaseException) -> bool:
        """On Ctrl-C or SIGTERM (`error`): save the position after the last step done when it lies inside an
        epoch, came between two steps (`held_steps`; a KeyboardInterrupt raised inside a step leaves it half
        done) and is not saved yet (one process only: under DDP the other ranks are not there to take
        part). True when the run's latest checkpoint is that position."""
        if self.done is None:
            return False
        epoch, step, total, sums = self.done
        if not 0 < step < total:
            return False
        if self.saved == (epoch, step):
            return True
        if self.info.enabled or not getattr(error, "between_steps", False):
            return False
        self._write(epoch, step, sums)
        return True

    def newest_epoch(self) -> int:
        """The epoch of the newest mid-epoch checkpoint written (0: none): an epoch end before it is older."""
        return self.saved[0] if self.saved is not None else 0

    def _write(self, epoch: int, step: int, sums: Tensor) -> None:
        mine = (sums.detach().cpu(), rng_state())
        every = [mine]
        if self.info.enabled:  # each rank's sums and random state, in one collective
            every = [None] * self.info.world
            torch.distributed.all_gather_object(every, mine)
        if self.info.is_main:
            self.save(EpochPosition(epoch, step, torch.stack([s for s, _ in every]), [r for _, r in every]))
        self.saved, self.last = (epoch, step), time.monotonic()

"""PyTorch's CPU threads for a training command (`--threads` of pretrain, eval, ablate, tune and demo).

The rule, one home for every command. The CPUs a process may use are its affinity set
(`os.sched_getaffinity`, which a container's or `taskset`'s limit narrows), shared by the processes of a
DDP job on this machine (LOCAL_WORLD_SIZE). The machine is *oversubscribed* when its one-minute load
average (runnable threads, every process's) exceeds the machine's cores: then OpenMP threads spin-wait
for each other whenever a core is taken away, and one thread is many times faster than several
(measured by `kebr demo` on 2 cores shared with other jobs: a batch-32 step took 0.9–3.7 s with 2
threads, 0.28 s with 1). So the default is every CPU this process may use on a quiet machine and one
thread on an oversubscribed one; `--threads N` is taken as given, and so is OMP_NUM_THREADS when set
(the usual way to pin a job's threads, which PyTorch reads too). The thread count changes how fast a
run computes, never what it computes to the tolerance a CPU run is repeatable at, so it is no part of a
run's identity (it is not a RunConfig field).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity set; os.cpu_count() where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def machine_load() -> float | None:
    """The one-minute load average, or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def oversubscription() -> str | None:
    """'load 7.9 on 2 cores' when more threads want to run than the machine has cores, else None."""
    load, cores = machine_load(), max(1, os.cpu_count() or 1)
    if load is None or load <= cores:
        return None
    return f"load {load:.1f} on {cores} core{'s' if cores != 1 else ''}"


@dataclass(frozen=True)
class ThreadPlan:
    threads: int  # PyTorch's intra-op threads for this process
    cpus: int  # the CPUs this process may use (its share among the job's processes here)
    busy: str | None  # `oversubscription()` when the plan was made
    given_by: str | None  # "--threads" or "OMP_NUM_THREADS" when the count was given, None for the rule

    def describe(self) -> str:
        """'threads: 1 of 2 CPUs this process may use (machine oversubscribed: load 7.9 on 2 cores; --threads N
        overrides)'."""
        text = f"threads: {self.threads} of {self.cpus} CPU{'s' if self.cpus != 1 else ''} this process may use"
        if self.given_by == "OMP_NUM_THREADS":
            text += " (OMP_NUM_THREADS)"
        if self.busy:
            text += f" (machine oversubscribed: {self.busy}" + ("" if self.given_by else "; --threads N overrides") + ")"
        return text


def plan_threads(requested: int | None) -> ThreadPlan:
    """`requested` threads, or (None) OMP_NUM_THREADS when it is a count, else the rule of the module docstring."""
    processes_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # set by torchrun
    cpus = max(1, usable_cpus() // processes_here)
    busy = oversubscription()
    if requested is not None:
        return ThreadPlan(requested, cpus, busy, given_by="--threads")
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadPlan(int(omp), cpus, busy, given_by="OMP_NUM_THREADS")
    return ThreadPlan(1 if busy else cpus, cpus, busy, given_by=None)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to `threads` while the block runs (0: left as they are), then put
    back, so a process that goes on (tests, the demo's later steps) keeps its own setting."""
    import torch

    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

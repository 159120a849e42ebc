"""`--threads` of every training command (pretrain, eval, ablate, tune, demo): the option and its use
around a recipe; the rule is `kebr_core.threads`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import typer

from kebr_cli.app import Verbosity
from kebr_cli.reporter import Reporter
from kebr_core.threads import oversubscription, plan_threads, torch_threads

Threads = typer.Option(None, "--threads", min=0, help="CPU threads of PyTorch in this process (0 = PyTorch's own default). Default: OMP_NUM_THREADS when set, else every CPU this process may use, or 1 when the machine is oversubscribed (load average above its cores: there one thread is many times faster). Not part of the run's identity: a run resumes with any.")


@contextmanager
def using_threads(report: Reporter, threads: Optional[int]) -> Iterator[None]:
    """Run the block with `--threads` (kebr_core.threads.plan_threads): the choice goes to the log (and,
    when the machine is oversubscribed, to the screen), and every progress line says when the machine is
    oversubscribed."""
    plan = plan_threads(threads)
    report.line(plan.describe(), level=Verbosity.NORMAL if plan.busy else Verbosity.VERBOSE)
    report.busy = oversubscription
    with torch_threads(plan.threads):
        yield

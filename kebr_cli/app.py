"""The Typer application every command registers on, and the helpers they share.

Commands only parse options, call a `kebr_core` recipe and render Rich output; `run_core` turns a
`KebrError` into one red sentence and a non-zero exit.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kebr_core import __version__
from kebr_core.errors import KebrError, native_write_error, os_error_message

# No downloads unless the user opts in: a missing model fails fast with a clear sentence.
if os.environ.get("KEBR_ALLOW_DOWNLOADS", "") not in ("1", "true", "yes"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Tables stay whole when the output is a file or a pipe (Rich would otherwise assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

app = typer.Typer(
    name="kebr",
    help=(
        "KEBR: knowledge-enhanced self-supervised balanced representation for multimodal sentiment "
        "analysis. Extract features from videos, pretrain, fine-tune and evaluate, ablate, predict."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"kebr {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """KEBR toolkit."""


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print one sentence in red on stderr and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """A Typer `parser=` for a float option: finite (no nan/inf) and within [low, high] (open ends as
    given); anything else is a usage error (exit 2) naming the option. Click's FloatRange lets nan through."""
    low_text = "" if low is None else f"{'>' if low_open else '≥'} {low:g}"
    high_text = "" if high is None else f"{'<' if high_open else '≤'} {high:g}"
    wanted = " and ".join(t for t in (low_text, high_text) if t)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{text!r} is not a number") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise typer.BadParameter(f"must be a finite number{' ' + wanted if wanted else ''}, not {text}")
        return value

    return parse


def resume_command(flag: str | None = None) -> str:
    """This command line as a user can paste it again, with `flag` (e.g. "--resume") added if missing."""
    import shlex

    args = sys.argv[1:]
    if flag and flag not in args:
        args = [*args, flag]
    return shlex.join(["kebr", *args])


@contextmanager
def user_errors(resume_flag: str | None = None) -> Iterator[None]:
    """Turn what a user can cause into one red sentence and a non-zero exit (no traceback).

    KebrError and OS errors (read-only or full disk, permissions, missing folder, long names) exit 1;
    Ctrl-C exits 130 and prints the command that continues the run (this one, plus `resume_flag`).
    """
    try:
        yield
    except KebrError as e:
        raise fail(str(e)) from None
    except OSError as e:
        raise fail(os_error_message(e)) from None
    except Exception as e:
        message = native_write_error(e)  # torch.save / safetensors report a full disk without an OSError
        if message is None:
            raise
        raise fail(f"{message[:-1]}; then continue with: {resume_command(resume_flag)}") from None
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]; what was finished is kept. To continue, run: "
                          f"{resume_command(resume_flag)}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun launch: only rank 0 prints."""
    return os.environ.get("RANK", "0") == "0"


def relaunch_distributed(nproc: int) -> "typer.Exit":
    """Run this same command under torchrun with `nproc` processes (DDP) and return its exit.

    The command line is taken from sys.argv without its --nproc-per-node option.
    """
    import subprocess

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--nproc-per-node":
            skip = True
            continue
        if a.startswith("--nproc-per-node="):
            continue
        args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "kebr_cli", *args]
    err_console.print(f"launching {nproc} processes: {' '.join(cmd[1:])}", highlight=False)
    return typer.Exit(subprocess.call(cmd))


def progress() -> Progress:
    """A Rich progress bar with count, rate-friendly columns and an ETA (quiet when not a TTY)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        disable=(not sys.stderr.isatty() and os.environ.get("KEBR_PROGRESS") != "1") or not is_main_process(),
    )

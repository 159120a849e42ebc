"""The Typer application every command registers on, and the helpers they share.

Commands only parse options, call a `kebr_core` recipe and render Rich output; `user_errors` turns a
`KebrError` (or an OS error a user can cause) into one red sentence and a non-zero exit. Beside it:
`kebr_cli.launcher` (the torchrun relaunch of --nproc-per-node/--nnodes) and `kebr_cli.reporter` (the
Rich progress bars, epoch lines and log.txt).
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup, TyperOption

from kebr_core import __version__
from kebr_core.errors import EveryRankError, KebrError, native_write_error, os_error_message
from kebr_core.strict import decimal_number

# No downloads unless the user opts in: a missing model fails fast with a clear sentence.
if os.environ.get("KEBR_ALLOW_DOWNLOADS", "") not in ("1", "true", "yes"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Help shows a flag as its name alone: Typer ≥ 0.25 would print "<bool>" after every on/off switch.
if hasattr(TyperOption, "display_type_rich"):
    _typer_option_type = TyperOption.display_type_rich

    def _option_type(self: TyperOption, ctx) -> Optional[str]:
        return None if self.is_flag else _typer_option_type(self, ctx)

    TyperOption.display_type_rich = _option_type  # type: ignore[method-assign]

# Tables stay whole when the output is a file or a pipe (Rich would otherwise assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


class Verbosity(IntEnum):
    QUIET = 0  # results and errors only
    NORMAL = 1  # + progress bars (plain lines every 10 s off a terminal) and a line per finished epoch
    VERBOSE = 2  # + the run's settings, plain progress lines every second


settings = {"verbosity": Verbosity.NORMAL}  # set by the global --quiet / --verbose

GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose")  # the app's --quiet / --verbose (main below)


class GlobalFlagsAnywhere(TyperGroup):
    """`kebr eval … -q` reads as `kebr -q eval …`: the global --quiet / --verbose given after the command
    name (before a `--`) move in front of it, unless that command has an option of the same name."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        at = next((n for n, a in enumerate(args) if not a.startswith("-")), None)  # the command name
        command = self.commands.get(args[at]) if at is not None else None
        if command is not None:
            own = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
            end = args.index("--") if "--" in args[at:] else len(args)
            moved = [a for a in args[at + 1:end] if a in GLOBAL_FLAGS and a not in own]
            if moved:
                rest = [a for a in args[at + 1:end] if not (a in GLOBAL_FLAGS and a not in own)]
                args = [*moved, *args[:at + 1], *rest, *args[end:]]
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="kebr",
    help=(
        "KEBR: knowledge-enhanced self-supervised balanced representation for multimodal sentiment "
        "analysis. Extract features from videos, pretrain, fine-tune and evaluate, ablate, predict."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    cls=GlobalFlagsAnywhere,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"kebr {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only results and errors: no progress, no per-epoch lines (also accepted after the command)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print the run's settings, and progress lines every second when not on a terminal (also accepted after the command)."),
) -> None:
    """KEBR toolkit."""
    if quiet and verbose:
        raise fail("--quiet and --verbose contradict each other: give one of them.", code=2)
    settings["verbosity"] = Verbosity.QUIET if quiet else Verbosity.VERBOSE if verbose else Verbosity.NORMAL


def choices(name: str, *values: str) -> type[Enum]:
    """An option's allowed values as an Enum, so help shows them (<kebr33|mmsa33>) and click refuses any
    other in one sentence. Pass `.value` on to kebr_core."""
    return Enum(name, {value: value for value in values}, type=str)  # type: ignore[return-value]


DEVICE_METAVAR = "auto|cpu|cuda[:N]"  # --device stays a string: cuda:1 names the second GPU


def renamed(new_value: Any, old_value: Any, new: str, old: str) -> Any:
    """The value of an option given by its new name or its old one (a hidden alias kept for one
    release, which prints a note); None when neither was given."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise KebrError(f"{new} was given twice: also as {old}, its old name; keep {new}.")
    err_console.print(f"[yellow]note:[/] {old} is now {new}; the old name goes away in the next release.",
                      highlight=False, soft_wrap=True)
    return old_value


def one_store(positional: Optional[Path], option: Optional[Path], command: str) -> Path:
    """The store a command reads, given as `-d/--dataset STORE` or (as before) positionally."""
    if positional is not None and option is not None and positional != option:
        raise KebrError(f"kebr {command} got two stores, {positional} and -d {option}: give one.")
    store = option or positional
    if store is None:
        raise KebrError(f"kebr {command} needs a store: -d STORE.h5 (or the store as its first argument).")
    return store


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print one sentence in red on stderr and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # a path may hold [..]
    return typer.Exit(code)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """A Typer `parser=` for a float option: finite (no nan/inf) and within [low, high] (open ends as
    given); anything else is a usage error (exit 2) naming the option. Click's FloatRange lets nan through."""
    low_text = "" if low is None else f"{'>' if low_open else '≥'} {low:g}"
    high_text = "" if high is None else f"{'<' if high_open else '≤'} {high:g}"
    wanted = " and ".join(t for t in (low_text, high_text) if t)

    def parse(text: str) -> float:
        value = decimal_number(str(text))  # plain decimal, as in CSVs and --set (kebr_core.strict)
        if value is None:
            raise typer.BadParameter(f"{text!r} is not a number in plain decimal")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise typer.BadParameter(f"must be a finite number{' ' + wanted if wanted else ''}, not {text}")
        return value

    return parse


def without_options(args: list[str], options: tuple[str, ...]) -> list[str]:
    """`args` without the `options` (each taking a value: "--opt VALUE" or "--opt=VALUE")."""
    kept, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif a.split("=", 1)[0] not in options:
            kept.append(a)
    return kept


def resume_command(flag: str | None = None, drop: tuple[str, ...] = ()) -> str:
    """This command line as a user can paste it again, with `flag` (e.g. "--resume") added if missing and
    the options in `drop` (each taking a value, e.g. "--seed-shard") left out."""
    import shlex

    args = without_options(sys.argv[1:], drop)
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
    except EveryRankError as e:  # every rank stops with this sentence: one per machine says it
        raise (fail(str(e)) if is_first_on_node() else typer.Exit(1)) from None
    except KebrError as e:
        raise fail(str(e)) from None
    except OSError as e:
        raise fail(os_error_message(e)) from None
    except Exception as e:
        message = native_write_error(e)  # torch.save / safetensors report a full disk without an OSError
        if message is None:
            raise
        raise fail(f"{message[:-1]}; then continue with: {resume_command(resume_flag)}") from None
    except KeyboardInterrupt as e:
        how = "stopped by SIGTERM" if e.args == (SIGTERM_NAME,) else "interrupted"
        if not is_first_on_node():  # every rank got the signal; one per machine says it
            raise typer.Exit(130) from None
        err_console.print(f"[yellow]{how}[/]; what was finished is kept. To continue, run: "
                          f"{resume_command(resume_flag)}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


SIGTERM_NAME = "SIGTERM"  # the KeyboardInterrupt's argument when SIGTERM raised it


def stop_on_sigterm() -> None:
    """Make SIGTERM (`kill`, a batch scheduler's stop) end a command as Ctrl-C does: the last finished
    epoch is saved and the command that continues is printed (`user_errors`). Only in the process that
    installs it: a forked worker, which inherits the handler, still dies of SIGTERM as before."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        return
    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt(SIGTERM_NAME)

    signal.signal(signal.SIGTERM, handler)


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun launch: only rank 0 prints."""
    return os.environ.get("RANK", "0") == "0"


def is_first_on_node() -> bool:
    """False on all but one process of each machine of a torchrun launch: what every rank would say alike
    (a stop, an error all of them raise) is said once on each machine's terminal."""
    return os.environ.get("LOCAL_RANK", "0") == "0"

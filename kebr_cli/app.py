"""The Typer application every command registers on, and the helpers they share.

Commands only parse options, call a `kebr_core` recipe and render Rich output; `user_errors` turns a
`KebrError` (or an OS error a user can cause) into one red sentence and a non-zero exit.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup, TyperOption

from kebr_core import __version__
from kebr_core.errors import EveryRankError, KebrError, native_write_error, os_error_message
from kebr_core.strict import decimal_number
from kebr_core.io import open_for_writing

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


# How several machines are named (kebr pretrain/eval/ablate pass these on to torchrun; README "Many machines").
NNodes = typer.Option(1, "--nnodes", min=1, help="Machines (nodes) taking part; start the same command on each, with its own --node-rank. More than 1 needs --rdzv-endpoint or --master-addr.")
NodeRank = typer.Option(None, "--node-rank", min=0, show_default=False, help="This machine's number among --nnodes, 0 .. nnodes-1 (node 0 holds rank 0, which writes; default: $SLURM_NODEID under SLURM, else 0; with --rdzv-endpoint the nodes are numbered as they join).")
RdzvEndpoint = typer.Option(None, "--rdzv-endpoint", metavar="HOST:PORT", help="Where the nodes meet (torchrun's c10d rendezvous): a host every node can reach and a free port on it, the same on every node.")
MasterAddr = typer.Option(None, "--master-addr", metavar="HOST", help="Instead of --rdzv-endpoint: the host of node 0 (torchrun's static rendezvous; --node-rank then fixes each node's ranks).")
MasterPort = typer.Option(29500, "--master-port", min=1, max=65535, help="The port on --master-addr.")

# The launcher's own options: the command torchrun starts on each process must not carry them.
LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--master-addr", "--master-port")


def launch_wanted(nproc: int, nnodes: int) -> bool:
    """Whether the command runs under torchrun: several processes here, or several machines."""
    return nproc > 1 or nnodes > 1


def node_rank_or_slurm(node_rank: Optional[int]) -> int:
    """--node-rank as given; unset, SLURM's number of this node ($SLURM_NODEID, so that one `srun kebr …`
    line gives every node its own), else 0."""
    if node_rank is not None:
        return node_rank
    slurm = os.environ.get("SLURM_NODEID", "")
    if slurm and not slurm.isdigit():
        raise KebrError(f"$SLURM_NODEID is {slurm!r}, not a node number; pass --node-rank.")
    return int(slurm or 0)


def torchrun_arguments(nproc: int, nnodes: int = 1, node_rank: Optional[int] = None, rdzv_endpoint: Optional[str] = None,
                       master_addr: Optional[str] = None, master_port: int = 29500) -> list[str]:
    """torchrun's options for this launch: --standalone on one machine, else the nodes' rendezvous
    (c10d at `rdzv_endpoint`, or static at `master_addr`:`master_port`, this node numbered by
    `node_rank_or_slurm`)."""
    node_rank = node_rank_or_slurm(node_rank) if nnodes > 1 else 0
    if node_rank >= nnodes:
        raise KebrError(f"--node-rank {node_rank} is out of range: with --nnodes {nnodes} it must be 0 .. {nnodes - 1}.")
    if rdzv_endpoint is not None and master_addr is not None:
        raise KebrError("--rdzv-endpoint and --master-addr both name where the nodes meet: give one of them.")
    if rdzv_endpoint is not None:
        host, _, port = rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise KebrError(f"--rdzv-endpoint must be HOST:PORT (e.g. node0.cluster:29400), not {rdzv_endpoint!r}.")
    if rdzv_endpoint is not None:
        # The c10d rendezvous numbers the nodes as they join (torchrun ignores --node-rank there). One fixed
        # job id: every node must give the same, and the endpoint already tells jobs apart.
        return [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", "--rdzv-id=kebr"]
    if master_addr is not None:
        return [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}", f"--master-port={master_port}"]
    if nnodes > 1:
        raise KebrError(f"--nnodes {nnodes} needs to know where the nodes meet: add --rdzv-endpoint HOST:PORT "
                        "(or --master-addr HOST), the same on every node.")
    return ["--standalone"]


def relaunch_distributed(nproc: int, nnodes: int = 1, node_rank: Optional[int] = None, rdzv_endpoint: Optional[str] = None,
                         master_addr: Optional[str] = None, master_port: int = 29500) -> "typer.Exit":
    """Run this same command under torchrun with `nproc` processes on this machine (DDP), one of `nnodes`
    machines, and return its exit.

    The command line is taken from sys.argv without the launcher's own options (`LAUNCH_OPTIONS`)."""
    import signal
    import subprocess

    with user_errors():
        launch = torchrun_arguments(nproc, nnodes, node_rank, rdzv_endpoint, master_addr, master_port)
    args = without_options(sys.argv[1:], LAUNCH_OPTIONS)
    # torchrun through kebr_cli.torchrun: its traceback on Ctrl-C and its failure summary are left out
    cmd = [sys.executable, "-m", "kebr_cli.torchrun", *launch, f"--nproc-per-node={nproc}", "-m", "kebr_cli", *args]
    where = f" on node {node_rank_or_slurm(node_rank)} of {nnodes}" if nnodes > 1 else ""
    err_console.print(f"launching {nproc} process(es){where}: {' '.join(cmd[1:])}", highlight=False)
    launcher = subprocess.Popen(cmd)
    try:
        return typer.Exit(launcher.wait())
    except KeyboardInterrupt as e:
        # Ctrl-C reached torchrun too (the terminal signals the whole group); a SIGTERM sent to this process
        # alone is passed on, so that torchrun stops its workers and they save their last epoch.
        if e.args == (SIGTERM_NAME,):
            launcher.send_signal(signal.SIGTERM)
        return typer.Exit(launcher.wait())


def verbosity() -> Verbosity:
    return settings["verbosity"]


def show_progress() -> bool:
    """Live Rich bars: on a terminal (or KEBR_PROGRESS=1), rank 0, not --quiet."""
    return (sys.stderr.isatty() or os.environ.get("KEBR_PROGRESS") == "1") and is_main_process() and verbosity() > Verbosity.QUIET


def progress() -> Progress:
    """A Rich progress display: what, a bar, done/total, elapsed and ETA; nothing squeezes the bar
    (metrics go on lines of their own, see `Reporter`). Disabled off a terminal and with --quiet."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        expand=True,
        disable=not show_progress(),
    )


def _metrics_text(info: dict) -> str:
    """'loss 0.4123 · task_l1 0.3901 · … (12.3 s)': every number of an event, in its order (a fine-tuning
    epoch's train_ prefix left out: the line is about training, valid_ columns keep theirs)."""
    parts = [f"{k.removeprefix('train_')} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()
             if k not in ("epoch", "seconds") and isinstance(v, (int, float))]
    text = " · ".join(parts)
    if isinstance(info.get("seconds"), (int, float)):
        text += f" ({info['seconds']:.1f} s)"
    return text


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Reporter:
    """Renders kebr_core's progress events (`kebr_core.training.ProgressFn`) for a person.

    On a terminal: one Rich bar per stage (epochs, seeds, configurations) and one for the batches of
    the epoch in progress, each with its ETA; every finished epoch prints its metrics as a line above
    the bars. Off a terminal (CI logs, `| tee`): the same epoch lines, and a plain progress line per
    stage at most every 10 s (1 s with --verbose). --quiet prints neither. With `log_dir`, every line,
    the results and any error also go to log_dir/log.txt (appended, so a resumed run keeps its history).
    """

    def __init__(self, log_dir: Optional[Path] = None, epoch_lines: Verbosity = Verbosity.NORMAL):
        self.log_path = log_dir / "log.txt" if log_dir is not None and is_main_process() else None
        self.epoch_lines = epoch_lines  # the verbosity from which finished epochs print their line
        self.scope = ""  # a prefix of bars and lines, e.g. the demo's current step
        # With --threads (kebr_cli.threads): says whether the machine is oversubscribed now, for progress lines.
        self.busy: Optional[Callable[[], Optional[str]]] = None
        self._log = None
        self._pending: list[str] = []  # lines before the run started (bad options leave no run directory)
        self._stack = ExitStack()
        self._bars: Optional[Progress] = None
        self._tasks: dict[str, int] = {}
        self._started: dict[str, tuple[float, int]] = {}  # stage → (time, done) of its first event
        self._last: dict[str, int] = {}
        self._printed: dict[str, float] = {}

    def __enter__(self) -> "Reporter":
        today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        self.log(f"── {today} · kebr {__version__} · {' '.join(['kebr', *sys.argv[1:]])}")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self._log is not None:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {exc}" if isinstance(exc, KebrError) else f"failed: {exc!r}"
            self.log(reason)
        self._stack.close()

    def _open_log(self) -> None:
        """Start log.txt once the run has started (its first progress event or result)."""
        if self.log_path is None or self._log is not None:
            return
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self._stack.enter_context(open_for_writing(self.log_path, append=True))  # never through a link
        except OSError as e:
            raise KebrError(f"The log file {os_error_message(e)}") from None  # "The log file PATH: what to do."
        self._log.write("".join(text + "\n" for text in self._pending))
        self._pending.clear()

    def log(self, text: str) -> None:
        """A line for log.txt only."""
        if self.log_path is None:
            return
        text = f"{datetime.now().strftime('%H:%M:%S')} {text}"  # local time; the header has the date
        if self._log is None:
            self._pending.append(text)
            return
        self._log.write(text + "\n")
        self._log.flush()

    def line(self, text: str, *, level: Verbosity = Verbosity.NORMAL) -> None:
        """A line for the person (stderr, above any bars) and the log."""
        self.log(text)
        if verbosity() >= level and is_main_process():
            target = self._bars.console if self._bars is not None else err_console
            target.print(text, highlight=False, markup=False, soft_wrap=True)

    def note(self, text: str, kind: str = "note") -> None:
        """A note or warning: on stderr (stdout stays for results and JSON), and in the log."""
        self.log(f"{kind}: {text}")
        if is_main_process():
            err_console.print(f"[yellow]{kind}:[/] {text}", highlight=False, soft_wrap=True)

    def warning(self, text: str) -> None:
        self.note(text, kind="warning")

    def result(self, renderable: Any, *, to_stdout: bool = True) -> None:
        """A result (a table, a sentence): on stdout unless --json, and as plain text in the log. The
        bars stop first, so the result is not printed into them."""
        self._open_log()
        if self._bars is not None:
            self._bars.stop()
        if self._log is not None:
            plain = Console(file=io.StringIO(), width=120, color_system=None)
            plain.print(renderable)
            self.log("\n" + plain.file.getvalue().rstrip())  # type: ignore[attr-defined]
        if to_stdout and is_main_process():
            console.print(renderable)

    def __call__(self, stage: str, done: int, total: int, info: dict) -> None:
        """kebr_core's progress callback."""
        from kebr_core.training import BATCH_STAGE

        self._open_log()
        scope = f"{self.scope}: " if self.scope else ""
        key, batch = scope + stage, stage == BATCH_STAGE
        label = f"  {scope}epoch {info.get('epoch', '')} batches" if batch else key
        eta = self._eta(key, done, total, info.get("seconds"))
        live = show_progress()
        metrics = "" if batch else _metrics_text(info)
        if metrics:  # a finished epoch / seed: its line (with the stage's ETA where no bar shows one)
            unit = "epoch " if "epoch" in info else ""
            when = f" · ETA {_duration(eta)}" if eta is not None and not live else ""
            self.line(f"{key} {unit}{done}/{total}: {metrics}{when}{self._busy_text()}", level=self.epoch_lines)
        if verbosity() == Verbosity.QUIET or not is_main_process():
            return
        if live:
            self._bar(key, label, done, total)
        elif not (metrics and verbosity() >= self.epoch_lines):  # no second line for what was just printed
            self._plain(key, label, done, total, eta, finished=bool(total) and done >= total and not batch)

    def _busy_text(self) -> str:
        """' · machine oversubscribed (load 7.9 on 2 cores)' while it is, else ''."""
        busy = self.busy() if self.busy is not None else None
        return f" · machine oversubscribed ({busy})" if busy else ""

    def _eta(self, key: str, done: int, total: int, seconds: Any) -> Optional[float]:
        """Seconds left in a stage: the mean time per unit since its first event times the units left
        (for the first unit, its own "seconds" if the event has them); None when done or unknown."""
        now = time.monotonic()
        start = self._started.get(key)
        if start is None or done < self._last.get(key, 0):  # first event, or the stage began again
            start = self._started[key] = (now, done)
        self._last[key] = done
        if not total or done >= total:
            return None
        t0, done0 = start
        if done > done0:
            return (now - t0) / (done - done0) * (total - done)
        return float(seconds) / max(done, 1) * (total - done) if isinstance(seconds, (int, float)) else None

    def drop_bars(self, keep: tuple[str, ...] = ()) -> None:
        """Remove the finished stages' bars (all but the stages in `keep`), and forget their clocks: a stage
        per video (`kebr extract`'s seconds decoded) must not grow them over 10^5 videos."""
        for stage in [s for s in self._tasks if s not in keep]:
            if self._bars is not None:
                self._bars.remove_task(self._tasks[stage])
            del self._tasks[stage]
        for clocks in (self._started, self._last, self._printed):
            for stage in [s for s in clocks if s not in keep]:
                del clocks[stage]

    def _bar(self, stage: str, label: str, done: int, total: int) -> None:
        if self._bars is None:
            self._bars = self._stack.enter_context(progress())
        task = self._tasks.get(stage)
        if task is None:
            task = self._tasks[stage] = self._bars.add_task(label, total=total)
        elif done < next(t.completed for t in self._bars.tasks if t.id == task):  # a new epoch / seed: the bar
            # starts again (found by id: `tasks` is a list, whose positions stop being ids once a bar was removed)
            self._bars.reset(task, total=total, description=label)
        self._bars.update(task, completed=done, total=total, description=label)

    def _plain(self, key: str, label: str, done: int, total: int, eta: Optional[float], finished: bool) -> None:
        """A progress line per stage every 10 s (1 s with --verbose), the first after that long, so a
        short stage prints nothing; a stage that printed one also says when it finishes (an epoch's
        batches excepted: its epoch line follows)."""
        now = time.monotonic()
        every = 1.0 if verbosity() >= Verbosity.VERBOSE else 10.0
        last = self._printed.get(key, self._started[key][0])
        if not (now - last >= every or (finished and key in self._printed)):
            return
        self._printed[key] = now
        text = f"{label.strip()}: {done}/{total}" + (f" ({100 * done / total:.0f}%)" if total else "")
        if eta is not None:
            text += f" · ETA {_duration(eta)}"
        text += self._busy_text()
        err_console.print(text, highlight=False, markup=False, soft_wrap=True)

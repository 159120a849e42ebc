"""What a person sees of a run: kebr_core's progress events (`kebr_core.training.ProgressFn`) rendered
as Rich bars on a terminal or plain lines off one, a line per finished epoch, notes and results, and
log.txt in the run directory (`Reporter`); how much is shown follows the global --quiet/--verbose
(`kebr_cli.app.settings`).
"""

from __future__ import annotations

import io
import os
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kebr_cli.app import Verbosity, console, err_console, is_main_process, settings
from kebr_core import __version__
from kebr_core.errors import KebrError, os_error_message
from kebr_core.io import open_for_writing


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

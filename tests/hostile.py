"""Run one `kebr` command as a hostile input would meet it: in a child process, under a time and memory limit.

`tests/test_bad_input.py` runs its rows in-process (CliRunner), which cannot stop a hang or survive a
14 GiB allocation. Here every command is `python -m kebr_cli …` in its own session (so that a timeout
kills its extraction workers too), with

- a wall-clock limit: past it the whole process group gets SIGKILL and the result says `timed_out`;
- a memory guard: RLIMIT_DATA at twice the RSS limit plus 1 GiB, so that a resource bomb that slipped
  through dies of MemoryError instead of taking the machine (RLIMIT_AS is useless: torch reserves
  address space far beyond what it touches; RLIMIT_DATA counts only private writable memory);
- a measurement: the peak RSS of the command and of every descendant it reaped (`os.wait4`'s rusage),
  which `assert_refused` holds against the RSS limit. The command is the grandchild of a small launcher
  (LAUNCHER), not pytest's own child: Linux keeps a process's peak RSS across exec, and a child forked
  from pytest starts with pytest's pages (over 1 GB late in the suite), which CI once read as the command's.

The folder the command runs in is snapshotted before and after (`test_bad_input.snapshot`: path →
sha256), so that a check can say which files were lost, changed or created.

API (kept stable; other test files use it):

    result = run_hostile(["inspect", "bad.h5"], cwd=tmp_path, time_limit_s=60, rss_limit_mb=2000)
    result.code, result.output, result.seconds, result.peak_rss_mb   # + timed_out, lost_or_changed, created
    assert_refused(result, "bad.h5")   # exit 1, one `error:` line containing the fragment, no traceback,
                                       # nothing lost or changed or left behind, within both limits
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.test_bad_input import MARKER, snapshot

REPO = Path(__file__).resolve().parents[1]
_POLL_S = 0.05


@dataclass
class HostileResult:
    """What one command did. `code` is -9 when the time limit killed it."""

    code: int
    output: str  # stdout and stderr, interleaved as written
    seconds: float
    peak_rss_mb: float  # the child's and its reaped descendants' peak resident set, MB
    time_limit_s: float = 60.0
    rss_limit_mb: float = 2000.0
    timed_out: bool = False
    lost_or_changed: list[str] = field(default_factory=list)  # files of cwd that vanished or changed
    created: list[str] = field(default_factory=list)  # files of cwd that the command created
    markers: list[str] = field(default_factory=list)  # payload markers found below cwd

    def describe(self) -> str:
        return (f"exit {self.code} after {self.seconds:.1f} s (limit {self.time_limit_s:g}), peak RSS "
                f"{self.peak_rss_mb:.0f} MB (limit {self.rss_limit_mb:g}), timed out: {self.timed_out}\n"
                f"{self.output[-4000:]}")


def hostile_env() -> dict[str, str]:
    """The child's environment: this checkout first on the path, one thread, no network for models."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
               COLUMNS="200", PYTHONUNBUFFERED="1")
    return env


# The launcher: a fresh small interpreter that sets the memory guard, forks the command (a new process whose
# peak RSS starts from the launcher's few MB), waits for it and writes "<wait status> <peak RSS KiB>" to argv[1].
LAUNCHER = r"""
import os, resource, sys
report, guard, command = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
resource.setrlimit(resource.RLIMIT_DATA, (guard, guard))
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *command])
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(f"{status} {usage.ru_maxrss}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_hostile(args: list[str], cwd: Path, time_limit_s: float = 60, rss_limit_mb: float = 2000) -> HostileResult:
    """Run `python -m kebr_cli *args` in cwd under the limits; return what it did (never raises on its failure)."""
    cwd = Path(cwd)
    guard = int((2 * rss_limit_mb + 1024) * 2**20)
    before = snapshot(cwd)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "status"
        start = time.monotonic()
        child = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(report), str(guard), "-m", "kebr_cli", *map(str, args)],
                                 cwd=cwd, env=hostile_env(), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > time_limit_s:
                timed_out = True
                os.killpg(child.pid, signal.SIGKILL)
                _, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(_POLL_S)
        seconds = time.monotonic() - start
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
        peak_kib = usage.ru_maxrss  # the launcher's own (pytest's pages included): only if the command's is missing
        if report.exists() and not timed_out:  # the command's own exit and peak, as the launcher saw them
            command_status, peak_kib = map(int, report.read_text().split())
            child.returncode = os.waitstatus_to_exitcode(command_status)
        try:  # workers the child left behind (it was killed, or it leaked them) must not outlive the test
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out.seek(0)
        output = out.read().decode("utf-8", errors="replace")
    after = snapshot(cwd)
    return HostileResult(
        code=child.returncode, output=output, seconds=seconds, peak_rss_mb=peak_kib / 1024,  # KiB on Linux
        time_limit_s=time_limit_s, rss_limit_mb=rss_limit_mb, timed_out=timed_out,
        lost_or_changed=sorted(k for k, v in before.items() if after.get(k) != v),
        created=sorted(set(after) - set(before)), markers=[str(p) for p in cwd.rglob(MARKER)])


def assert_within_limits(result: HostileResult) -> None:
    """The command ended by itself, within the time limit, below the RSS limit, and ran no payload."""
    assert not result.timed_out, f"hung: {result.describe()}"
    assert result.seconds <= result.time_limit_s, result.describe()
    assert result.peak_rss_mb <= result.rss_limit_mb, f"too much memory: {result.describe()}"
    assert not result.markers, f"the payload ran: {result.markers}"


def assert_refused(result: HostileResult, fragment: str, *, code: int = 1, may_create: tuple[str, ...] = ()) -> None:
    """The command refused in one sentence: exit `code`, no traceback, exactly one `error:` line (the last
    line, for code 1) holding `fragment`, nothing lost or changed, nothing created beyond `may_create`
    (file names, or folder prefixes ending in /), within the limits."""
    assert_within_limits(result)
    assert result.code == code, result.describe()
    assert "Traceback" not in result.output, result.describe()
    flat = " ".join(result.output.split())
    assert fragment in flat, f"{fragment!r} not in the message: {result.describe()}"
    if code == 1:
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error")]
        assert len(errors) == 1 and lines[-1].startswith("error: "), result.describe()
        assert fragment in errors[0], f"{fragment!r} is not in the error sentence: {result.describe()}"
    assert not result.lost_or_changed, f"files lost or changed: {result.lost_or_changed}"
    unexpected = [n for n in result.created
                  if not any(n == p or (p.endswith("/") and n.startswith(p)) for p in may_create)]
    assert not unexpected, f"unexpected files left behind: {unexpected}"

"""kebr_core.extract.workers: the one native-stderr silencer, in this process and in a worker's life."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# fd 2 is written by os.write, as a native library (MediaPipe's glog) does; sys.stderr by Python.
QUIET_THEN_RESTORED = """
import os, sys
from kebr_core.extract.workers import quiet_native_stderr
with quiet_native_stderr():
    os.write(2, b"native banner\\n")
    print("python line", file=sys.stderr)
os.write(2, b"native after\\n")
"""

QUIET_FOR_A_WORKERS_LIFE = """
import os, sys
from kebr_core.extract.workers import quiet_native_stderr
quiet = quiet_native_stderr(in_worker=True)
quiet.__enter__()
os.write(2, b"native banner\\n")
print("python line", file=sys.stderr)
sys.stderr.flush()
os._exit(0)  # as a worker process ends: no clean-up restores fd 2
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_native_writes_to_fd2_are_hidden_and_python_stderr_is_kept() -> None:
    inside = run_python(QUIET_THEN_RESTORED)
    assert inside.returncode == 0, inside.stderr
    assert inside.stderr == "python line\nnative after\n"
    worker = run_python(QUIET_FOR_A_WORKERS_LIFE)
    assert worker.returncode == 0, worker.stderr
    assert worker.stderr == "python line\n"

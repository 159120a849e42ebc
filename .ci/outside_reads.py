"""pytest plugin for CI's run from a copy of the repository: fail when a test reads beside the copy.

CI copies the repository into an empty temporary folder and runs the tests there with
`-p outside_reads`; $KEBR_CI_COPY names the copy. Any file or folder a test opens or lists in the
copy's parent folder but outside the copy (e.g. ../shared/...) is reported and fails the session:
such a test would pass only in a checkout that has that file beside it. (Reads elsewhere, such as
pytest's own temporary folders or the virtualenv, are not about the repository and are allowed.)
"""

import os
import sys
from pathlib import Path

import pytest

COPY = Path(os.environ["KEBR_CI_COPY"]).resolve()
BESIDE = COPY.parent
EVENTS = {"open", "os.listdir", "os.scandir", "os.chdir"}
outside: set[str] = set()


def _audit(event: str, args: tuple) -> None:
    if event not in EVENTS or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    try:
        path = Path(os.fsdecode(args[0])).resolve()
    except (OSError, ValueError, TypeError):
        return
    if path.is_relative_to(BESIDE) and not path.is_relative_to(COPY):
        outside.add(str(path))


sys.addaudithook(_audit)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if outside:
        print(f"\nerror: tests read outside the repository copy {COPY}: " + ", ".join(sorted(outside)), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

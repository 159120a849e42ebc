"""Speech synthesis with espeak-ng's C library from the `espeakng-loader` wheel: no system package.

`espeakng-loader` (PyPI) ships `libespeak-ng` 1.52 and its `espeak-ng-data` for Linux, macOS and
Windows. kebr_core/espeak_worker.py drives the library's C API (speak_lib.h) through ctypes as the
`espeak-ng` program does for `--stdout` (synchronous synthesis, samples handed to a callback), one
process per text, since the library carries state between utterances (see that file and its known
problem).

    y, sample_rate = synthesize("i really like this movie", voice="en-us+m3", rate=160, pitch=50)
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import numpy as np

from kebr_core.errors import KebrError

WORKER = Path(__file__).with_name("espeak_worker.py")
UNAVAILABLE = "espeak-ng's library could not be loaded; reinstall it with `pip install espeakng-loader`"


def available() -> bool:
    """Whether espeak-ng's library loads (it does wherever the espeakng-loader wheel installed)."""
    try:
        import espeakng_loader

        ctypes.CDLL(espeakng_loader.get_library_path())
    except (ImportError, OSError):
        return False
    return True


def synthesize(text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
    """`text` spoken by espeak-ng `voice` at `rate` words per minute and `pitch` (0-99): (n,) float32
    in [-1, 1] and the sample rate (22050 Hz). Raises KebrError (one sentence) when it cannot."""
    done = subprocess.run([sys.executable, str(WORKER), voice, str(int(rate)), str(int(pitch))],
                          input=text.encode("utf-8"), capture_output=True)
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines() or [f"exit status {done.returncode}"]
        raise KebrError(f"Speech synthesis failed: {reason[-1]}")
    sample_rate = int(np.frombuffer(done.stdout[:4], np.uint32)[0])
    samples = np.frombuffer(done.stdout[4:], np.int16)
    return samples.astype(np.float32) / 32768.0, sample_rate

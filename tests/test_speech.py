"""espeak-ng's library from the espeakng-loader wheel (kebr_core.speech): speech with no system package."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from kebr_core import speech
from kebr_core.errors import KebrError


def fundamental(y: np.ndarray, sr: int) -> float:
    """The voice's pitch (Hz) from the autocorrelation peak of the loud part, lags for 60-400 Hz."""
    voiced = y[np.abs(y) > 0.1 * np.abs(y).max()].astype(np.float64)
    voiced -= voiced.mean()
    corr = np.correlate(voiced, voiced, "full")[voiced.size - 1 :]
    lags = np.arange(int(sr / 400), int(sr / 60))
    return sr / lags[corr[lags].argmax()]


def test_speech_needs_no_espeak_program_and_follows_rate_and_pitch(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", "")  # nothing from the system: the library comes with the wheel
    assert shutil.which("espeak-ng") is None and speech.available()
    y, sr = speech.synthesize("i really like this movie", "en-us+m3", 160, 50)
    assert sr == 22050 and y.dtype == np.float32 and y.ndim == 1
    assert 1.0 < y.size / sr < 3.0  # five words at 160 words per minute, plus the end pause
    assert 0.2 < np.abs(y).max() <= 1.0  # loud speech, never past full scale
    slow, _ = speech.synthesize("i really like this movie", "en-us+m3", 100, 50)
    assert slow.size > 1.3 * y.size  # 100 wpm lasts longer than 160 wpm
    low, _ = speech.synthesize("aaah", "en-us", 120, 10)
    high, _ = speech.synthesize("aaah", "en-us", 120, 90)
    assert fundamental(high, sr) > 1.3 * fundamental(low, sr)


def next_wall_clock_second() -> None:
    """Sleep into the next second of time(NULL), the clock espeak_ng_Initialize seeds its generator from."""
    time.sleep(1.02 - time.time() % 1)


@pytest.mark.parametrize("voice", ["en-us+f3", "en-us+m3"])  # the demo's voices; f3's breath uses espeak_rand
def test_the_same_text_gives_the_same_samples_in_every_run(voice: str):
    # Before espeak_worker reseeded the library's generator, f3's samples changed with the wall-clock
    # second (86 % of them, an RMS difference 5 % of the speech's); m3 draws nothing from it.
    first, _ = speech.synthesize("the film was horrible and boring", voice, 150, 40)
    speech.synthesize("something else entirely, said slowly", "en-us+m3", 90, 80)
    next_wall_clock_second()
    again, _ = speech.synthesize("the film was horrible and boring", voice, 150, 40)
    np.testing.assert_array_equal(again, first)


def test_unknown_voice_is_one_sentence():
    with pytest.raises(KebrError, match="no voice 'xx-nonexistent'"):
        speech.synthesize("hello", "xx-nonexistent", 160, 50)

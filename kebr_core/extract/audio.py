"""Acoustic features with librosa (docs/design.md §3): named 33-d feature sets at 22050 Hz, hop 512.

- `kebr33` (default, as the authors' code, which follows MMSA's `__getAudioEmbedding`): zero-crossing
  rate (1) + MFCC (20, `htk=True` mel filters) + chroma_cqt (12). MMSA's code calls the ZCR column
  "f0"; it is a zero-crossing rate, and we name it "zcr". (They resample with `librosa.load`, soxr;
  we decode and resample with FFmpeg's resampler through PyAV, one decode for features and ASR.)
- `mmsa33` (as the CH-SIMS paper describes MMSA's features): log-F0 (1) + MFCC (20) + CQT (12).
  * log-F0: `librosa.pyin` (probabilistic YIN) between C2 (65.4 Hz) and C6 (1046.5 Hz). pyin, not yin,
    because it decides voicing: unvoiced frames (and silence) get 0.0, voiced frames ln(f0 / 1 Hz)
    (>= 4.18), so the column separates the two. yin returns a pitch for every frame, noise included.
    pyin costs ~0.06 s per second of audio, ~20x real time on one core.
  * "CQT (12)": the CH-SIMS paper calls it a "12-dimensional Constant-Q chromatogram", i.e. the 12
    pitch-class bins of the constant-Q transform folded over octaves (`librosa.feature.chroma_cqt`).
    A raw 12-bin CQT would cover only C1..B1 (33-62 Hz), below almost every speaking voice.
  * MFCC exactly as in kebr33.

All frames are centred (librosa's default): a signal of n samples gives 1 + n // 512 frames, i.e.
duration * 22050 / 512 (+1) rows; `AUDIO_RATE_HZ` is the store's `audio_rate_hz`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

SAMPLE_RATE = 22050
HOP_LENGTH = 512
N_FFT = 2048
AUDIO_RATE_HZ = SAMPLE_RATE / HOP_LENGTH  # frames per second of every audio feature set
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@dataclass(frozen=True)
class AudioFeatureSet:
    """A named feature set: column names, the function (y at SAMPLE_RATE) -> (T, len(names)), and what it
    holds in a few words (the CLI's help)."""

    name: str
    names: tuple[str, ...]
    compute: Callable[[np.ndarray], np.ndarray]
    summary: str = ""

    @property
    def dim(self) -> int:
        return len(self.names)


def _stack(columns: list[np.ndarray]) -> np.ndarray:
    """(d_i, T_i) blocks -> (T, sum d_i) float32; T = the shortest (librosa's centred frames agree, but
    pyin/CQT have their own padding rules, so never trust lengths to match by construction)."""
    t = min(c.shape[-1] for c in columns)
    return np.concatenate([c[:, :t] for c in columns], axis=0).T.astype(np.float32, copy=False)


def _mfcc(y: np.ndarray) -> np.ndarray:
    import librosa

    return librosa.feature.mfcc(y=y, sr=SAMPLE_RATE, n_mfcc=20, n_fft=N_FFT, hop_length=HOP_LENGTH, htk=True)


def _chroma_cqt(y: np.ndarray) -> np.ndarray:
    import librosa

    return librosa.feature.chroma_cqt(y=y, sr=SAMPLE_RATE, hop_length=HOP_LENGTH, n_chroma=12)


def kebr33(y: np.ndarray) -> np.ndarray:
    """(n,) float32 at 22050 Hz -> (1 + n // 512, 33): [zcr, mfcc_0..19, chroma_C..chroma_B]."""
    import librosa

    zcr = librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP_LENGTH)
    return _stack([zcr, _mfcc(y), _chroma_cqt(y)])


def mmsa33(y: np.ndarray) -> np.ndarray:
    """(n,) float32 at 22050 Hz -> (1 + n // 512, 33): [log_f0, mfcc_0..19, cqt_C..cqt_B]."""
    import librosa

    f0, voiced, _ = librosa.pyin(
        y,
        fmin=librosa.note_to_hz("C2"),
        fmax=librosa.note_to_hz("C6"),
        sr=SAMPLE_RATE,
        frame_length=N_FFT,
        hop_length=HOP_LENGTH,
    )
    log_f0 = np.where(voiced & np.isfinite(f0), np.log(np.where(np.isfinite(f0), f0, 1.0)), 0.0)
    return _stack([log_f0[None, :], _mfcc(y), _chroma_cqt(y)])


_MFCC_NAMES = tuple(f"mfcc_{i}" for i in range(20))

# name → feature set: `get_feature_set` and the CLI's --audio-features choices and help read this table
# (the first entry is the default); a new feature set is one function and one entry.
FEATURE_SETS: dict[str, AudioFeatureSet] = {
    "kebr33": AudioFeatureSet(
        "kebr33", ("zcr", *_MFCC_NAMES, *(f"chroma_{p}" for p in PITCH_CLASSES)), kebr33,
        "ZCR+MFCC+chroma, the authors'",
    ),
    "mmsa33": AudioFeatureSet(
        "mmsa33", ("log_f0", *_MFCC_NAMES, *(f"cqt_{p}" for p in PITCH_CLASSES)), mmsa33,
        "log-F0+MFCC+CQT chroma",
    ),
}


def get_feature_set(name: str) -> AudioFeatureSet:
    from kebr_core.errors import KebrError

    if name not in FEATURE_SETS:
        raise KebrError(f"unknown audio feature set {name!r}; choose one of {', '.join(FEATURE_SETS)}")
    return FEATURE_SETS[name]


def audio_features(y: np.ndarray, feature_set: str | AudioFeatureSet = "kebr33") -> np.ndarray:
    """Mono float32 audio at SAMPLE_RATE (n,) -> (T, 33) float32 with T = 1 + n // HOP_LENGTH.

    Audio shorter than one hop gives (0, 33): too short to hold a single analysis frame's worth of
    signal (docs/design.md §2: zero-length, never fake rows).
    """
    fs = get_feature_set(feature_set) if isinstance(feature_set, str) else feature_set
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if y.size < HOP_LENGTH:
        return np.zeros((0, fs.dim), np.float32)
    with _quiet():
        return fs.compute(y)


def rms_dbfs(y: np.ndarray) -> float:
    """Root-mean-square level of the whole signal in dB relative to full scale (-inf for digital silence)."""
    if y.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def warmup() -> None:
    """Compile librosa's numba kernels once (a few seconds) so forked workers inherit them."""
    y = np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE).astype(np.float32)
    for fs in FEATURE_SETS.values():
        if fs.name == "kebr33":
            audio_features(y, fs)


class _quiet:
    """Silence librosa's 'n_fft too large for input' UserWarnings on very short clips."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", UserWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)

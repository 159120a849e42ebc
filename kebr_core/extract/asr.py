"""Offline speech recognition for videos without a manifest or sidecar transcript (docs/design.md §3).

- `pocketsphinx` (default): CMU PocketSphinx 5 with the US-English acoustic model, language model
  and dictionary shipped inside the PyPI wheel: no download, ~6x real time on one core. Accuracy is
  modest (word error rate ~0.45 on synthetic espeak-ng speech); use sidecar transcripts when you
  have them. Each video is decoded as one utterance.
- `whisper`: a Whisper checkpoint in Hugging Face format (a local folder, `--asr-model PATH`), run
  with `transformers` on the CPU. Nothing is downloaded.
- `none`: no ASR; a video without manifest text or sidecar gets an empty transcript.

Every backend takes mono float32 audio at 16 kHz and returns lower-case text. Each one is
deterministic per utterance (PocketSphinx uses batch cepstral mean normalisation over the whole
utterance, so no state leaks from one video to the next), which keeps the store independent of the
order and the number of workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from kebr_core.errors import KebrError

ASR_SAMPLE_RATE = 16000
ASR_BACKENDS = ("none", "pocketsphinx", "whisper")


class AsrBackend(Protocol):
    """Speech -> text. `name` is recorded as the sample's text source `asr:<name>`."""

    name: str
    version: str

    def transcribe(self, audio: np.ndarray) -> str:
        """(n,) float32 mono at 16 kHz -> transcript ('' when nothing was recognised)."""
        ...


class PocketSphinxAsr:
    """PocketSphinx with its bundled en-us model (loaded once per process, ~0.3 s)."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        try:
            import pocketsphinx
        except ImportError:
            raise KebrError(
                "ASR backend 'pocketsphinx' needs the pocketsphinx package (pip install pocketsphinx)"
            ) from None
        from importlib.metadata import version

        self.version = version("pocketsphinx")
        # Batch CMN (per utterance) keeps results independent of what was decoded before.
        # maxhmmpf 3000 (default 30000) caps the active HMMs per frame, CMU's first speed knob:
        # measured on 12 espeak-ng sentences through AAC, 6.2x instead of 4.3x real time, WER 0.44
        # instead of 0.47 (i.e. no loss).
        self._decoder = pocketsphinx.Decoder(
            samprate=ASR_SAMPLE_RATE, cmn="batch", maxhmmpf=3000, loglevel="FATAL"
        )

    def transcribe(self, audio: np.ndarray) -> str:
        if audio.size == 0:
            return ""
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


class WhisperAsr:
    """A local Whisper checkpoint (Hugging Face layout: config.json, weights, tokenizer files)."""

    name = "whisper"

    def __init__(self, model_path: Path) -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from transformers import WhisperForConditionalGeneration, WhisperProcessor
        except ImportError as e:  # pragma: no cover - transformers and torch are dependencies
            raise KebrError(f"ASR backend 'whisper' needs transformers and torch ({e})") from None
        try:
            self._processor = WhisperProcessor.from_pretrained(str(model_path), local_files_only=True)
            self._model = WhisperForConditionalGeneration.from_pretrained(
                str(model_path), local_files_only=True
            ).eval()
        except (OSError, ValueError) as e:
            raise KebrError(
                f"the Whisper model folder {model_path} cannot be loaded ({str(e).splitlines()[0]})"
            ) from None
        self._torch = torch
        import transformers

        self.version = f"transformers-{transformers.__version__}:{Path(model_path).name}"

    def transcribe(self, audio: np.ndarray) -> str:
        if audio.size == 0:
            return ""
        torch = self._torch
        texts: list[str] = []
        window = 30 * ASR_SAMPLE_RATE  # Whisper's receptive field; longer audio is cut into windows
        with torch.inference_mode():
            for start in range(0, audio.size, window):
                inputs = self._processor(
                    audio[start : start + window], sampling_rate=ASR_SAMPLE_RATE, return_tensors="pt"
                )
                ids = self._model.generate(inputs.input_features, language="en", task="transcribe")
                texts.append(self._processor.batch_decode(ids, skip_special_tokens=True)[0].strip())
        return " ".join(t for t in texts if t).lower()


def check_asr_options(backend: str, model_path: Path | None) -> None:
    """Validate `--asr` / `--asr-model` before any work starts (raises KebrError, one sentence)."""
    if backend not in ASR_BACKENDS:
        raise KebrError(f"unknown ASR backend {backend!r}; choose one of {', '.join(ASR_BACKENDS)}")
    if backend == "whisper":
        if model_path is None:
            raise KebrError(
                "--asr whisper needs a local model folder (--asr-model PATH, a Hugging Face Whisper "
                "checkpoint such as openai/whisper-tiny saved to disk), since kebr downloads nothing"
            )
        if not Path(model_path).is_dir():
            raise KebrError(f"the Whisper model folder {model_path} does not exist")
    elif model_path is not None:
        raise KebrError(f"--asr-model is only used with --asr whisper, not with --asr {backend}")
    if backend == "pocketsphinx":
        try:
            import pocketsphinx  # noqa: F401
        except ImportError:
            raise KebrError(
                "ASR backend 'pocketsphinx' needs the pocketsphinx package (pip install pocketsphinx), "
                "or choose --asr none"
            ) from None


def make_asr(backend: str, model_path: Path | None = None) -> AsrBackend | None:
    """The backend named by `--asr` (None for 'none')."""
    check_asr_options(backend, model_path)
    if backend == "none":
        return None
    if backend == "pocketsphinx":
        return PocketSphinxAsr()
    assert model_path is not None
    return WhisperAsr(model_path)

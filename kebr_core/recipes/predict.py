"""Recipe: the sentiment of new videos, from a fine-tuned checkpoint (`kebr predict`; docs/design.md §1).

    predictions = predict(["a.mp4", "b.mkv"], "runs/eval/best-model")

1. The checkpoint (a `best-model/` folder, or a `kebr eval` run directory holding one) says in its
   config.json which features it was trained on (`features`: the training store's column names and
   its `extractor` record). Videos are extracted with the same settings: audio feature set, vision
   backend, fps and picture size. The feature names this kebr computes must equal the checkpoint's;
   a checkpoint trained on features that cannot come from a video (a `kebr synth` or imported store)
   is refused with one sentence.
2. Each video goes through `kebr_core.extract.extractor.Extractor` (decode, audio, transcript, vision).
   Transcript: `text` (one video only) or the video's row of the `transcripts` table (id = the
   video's name without extension, or its path below a folder given), else a sidecar
   (.txt/.srt/.vtt), else ASR (`asr`).
3. The fine-tuned KEBRModel (`model.build_from_folder`: the text encoder and tokenizer from the
   folder, or by name when it was frozen and its name resolves everywhere) scores batches of `batch_size` videos,
   as they are extracted (memory stays flat for any number of videos).

Outputs per video (`Prediction`): the score clip(ŷ, −3, 3) on MOSI's scale; its 7-class label
round(score) (round half to even, as Acc-7 in docs/design.md §7): −3 highly negative … 0 neutral … 3 highly
positive; and the polarity negative / neutral / positive, defined by that label (neutral when it is 0,
i.e. |score| ≤ 0.5), so polarity and class never disagree.

A video that cannot be decoded gets its reason (`error`) and the others are still scored. A video
without an audio track, with silence, or without a face is scored from the streams it has (a
zero-length stream is masked, as in training) and gets a note saying so.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kebr_core import checkpoints
from kebr_core.config import DEFAULT_MAX_PARAMETERS, RunConfig
from kebr_core.data.dataset import Collator
from kebr_core.data.store import Sample
from kebr_core.errors import KebrError
from kebr_core.extract import audio as audio_mod
from kebr_core.extract.extractor import ExtractOptions, ItemResult
from kebr_core.extract.inputs import VideoItem, attach_transcripts, discover
from kebr_core.extract.limits import DEFAULT_MAX_DURATION_S
from kebr_core.extract.video import DecodeProgress
from kebr_core.extract.vision import vision_feature_names
from kebr_core.extract.workers import ordered_results, quiet_native_stderr, start_workers
from kebr_core.masking import tokenize_plain
from kebr_core.model_size import check_model_size
from kebr_core.model import build_from_folder, encoder_source
from kebr_core.training import (
    ProgressFn,
    autocast,
    no_progress,
    resolve_device,
)

# The 7 classes of round(score) (Acc-7's classes, docs/design.md §7).
SENTIMENT_CLASSES: dict[int, str] = {
    -3: "highly negative",
    -2: "negative",
    -1: "weakly negative",
    0: "neutral",
    1: "weakly positive",
    2: "positive",
    3: "highly positive",
}


# The one way from own videos to a score, named by every refusal of a model (README "From your videos to a
# score"): pretraining alone gives no model that scores, and features from elsewhere cannot be computed here.
SCORING_ROUTE = ("to score videos, extract labeled videos with `kebr extract` (e.g. raw MOSI clips: kebr extract "
                 "--manifest label.csv -o feats.h5), fine-tune on them with `kebr eval -d feats.h5 --out RUN`, then "
                 "`kebr predict VIDEO --model RUN/best-model`")

def sentiment_class(score: float) -> int:
    """round(clip(score, −3, 3)), half to even (as Acc-7): 2.5 → 2, −0.5 → 0."""
    return int(np.round(np.clip(score, -3.0, 3.0))) + 0  # + 0 turns −0 into 0


def polarity(score: float) -> str:
    """negative / neutral / positive by the 7-class label: neutral when round(score) = 0 (|score| ≤ 0.5)."""
    c = sentiment_class(score)
    return "positive" if c > 0 else "negative" if c < 0 else "neutral"


@dataclass
class Prediction:
    """One video's result: a score, or the reason there is none (`error`)."""

    video: str  # the path as given
    score: float | None = None  # clip(ŷ, −3, 3)
    raw_score: float | None = None  # the model's ŷ before clipping
    sentiment_class: int | None = None  # round(score) ∈ {−3, …, 3}
    label: str | None = None  # SENTIMENT_CLASSES[sentiment_class]
    polarity: str | None = None  # negative | neutral | positive
    text: str = ""  # the transcript that was scored
    text_source: str = ""  # option | table | sidecar | asr:<backend>
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.score is not None

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# The checkpoint


def extract_options_for(
    checkpoint: Path,
    features: dict | None,
    *,
    asr: str = "pocketsphinx",
    asr_model: Path | None = None,
    openface_dir: Path | None = None,
    workers: int = 0,
    max_duration: float = DEFAULT_MAX_DURATION_S,
) -> ExtractOptions:
    """The extraction settings of the checkpoint's training store, checked against this kebr.

    Raises KebrError (one sentence) when the checkpoint's features cannot be computed from videos."""
    if not features:
        raise KebrError(
            f"Checkpoint {checkpoint} does not record the features it was trained on (a pretraining checkpoint "
            f"cannot score), so give the best-model/ folder of a `kebr eval` run: {SCORING_ROUTE}."
        )
    made_by = features.get("extractor") or {}
    if not isinstance(made_by, dict) or made_by.get("tool") != "kebr extract":
        origin = (made_by.get("generator") or made_by.get("importer")) if isinstance(made_by, dict) else None
        raise KebrError(
            f"Checkpoint {checkpoint} was trained on a store made by {origin or 'something other than kebr extract'}, "
            f"whose features cannot be computed from videos: {SCORING_ROUTE}."
        )
    try:
        options = ExtractOptions(
            audio_features=made_by["audio"],
            vision=made_by["vision"],
            fps=float(made_by["fps"]),
            max_side=int(made_by.get("max_side", 640)),
            asr=asr,
            asr_model=asr_model,
            openface_dir=openface_dir,
            workers=workers,
            max_duration=max_duration,
        )
    except (KeyError, ValueError) as e:
        raise KebrError(f"Checkpoint {checkpoint} has an incomplete extractor record in config.json ({e}).") from None
    options.validate()
    names = (list(audio_mod.get_feature_set(options.audio_features).names), list(vision_feature_names(options.vision)))
    wanted = (list(features.get("audio_features") or []), list(features.get("vision_features") or []))
    for stream, have, want in zip(("audio", "vision"), names, wanted):
        if have != want:
            raise KebrError(
                f"Checkpoint {checkpoint} was trained on {len(want)} {stream} features that this kebr does not compute "
                f"({options.audio_features if stream == 'audio' else options.vision} gives {len(have)} other ones); "
                f"re-extract the training data with this version of kebr: {SCORING_ROUTE}."
            )
    rate = features.get("audio_rate_hz")
    if rate is not None and abs(float(rate) - audio_mod.AUDIO_RATE_HZ) > 1e-6:
        raise KebrError(
            f"Checkpoint {checkpoint} was trained on audio features at {rate:g} Hz, but this kebr computes "
            f"{audio_mod.AUDIO_RATE_HZ:g} Hz; re-extract the training data and fine-tune with this version."
        )
    return options


class Scorer:
    """A fine-tuned KEBRModel in eval mode with its tokenizer and collate: samples → scores ŷ."""

    def __init__(self, checkpoint: Path, cfg: RunConfig, includes_encoder: bool, device: torch.device) -> None:
        self.cfg, self.device, self.includes_encoder = cfg, device, includes_encoder
        check_model_size(cfg, f"checkpoint {checkpoint}", encoder_source(checkpoint, cfg.model.text_model))  # before any allocation
        # The encoder and tokenizer from the folder (text-encoder/), or by name when it holds none
        # (a frozen, offline-resolvable encoder; a folder written before text-encoder/ existed).
        self.model = build_from_folder(checkpoint, cfg, includes_encoder, skip_prefixes=("pretrain_head.",),
                                       route=SCORING_ROUTE.rstrip("."))
        self.tokenizer = self.model.tokenizer
        self.model.to(device).eval()
        self.collate = Collator.from_config(cfg.model, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def __call__(self, samples: Sequence[Sample]) -> np.ndarray:
        """(B,) float64 predictions ŷ of a batch of samples (unclipped)."""
        if not samples:
            return np.zeros(0)
        token_ids = tokenize_plain([s.text for s in samples], self.tokenizer, self.cfg.model.max_text_len)
        items = [
            {"index": k, "input_ids": np.asarray(ids, np.int64), "audio": s.audio, "vision": s.vision, "label": float("nan")}
            for k, (s, ids) in enumerate(zip(samples, token_ids))
        ]
        batch = {k: v.to(self.device) for k, v in self.collate(items).items()}
        # The precision of training: a frozen encoder's outputs were cached in float32 (build_text_cache),
        # a fine-tuned one ran under the run's autocast like the rest of the model.
        hidden = None if self.includes_encoder else self.model.encode_text(batch["input_ids"], batch["attention_mask"])
        with autocast(self.device, self.cfg.train.bf16):
            out = self.model(batch, task="finetune", text_hidden=hidden)
        return out.pred.float().cpu().numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------------
# The whole run


def video_items(videos: Sequence[str | Path], text: str | None = None, transcripts: Path | None = None) -> list[VideoItem]:
    """Paths (files, or folders searched recursively for videos) → items, with `text` or the rows of
    the `transcripts` table as their transcripts; a missing or odd file is kept (it gets its reason
    from the extractor), so every input has a result."""
    items: list[VideoItem] = []
    for video in videos:
        path = Path(video)
        if path.is_dir():
            found, _ = discover(path)
            if not found:
                raise KebrError(f"The folder {path} holds no videos (mp4, mkv, avi, mov, webm).")
            items += [VideoItem(id=str(it.path), path=it.path, key=it.key) for it in found]
        else:
            items.append(VideoItem(id=str(path), path=path, key=path.stem))
    if text is not None:
        if len(items) != 1:
            raise KebrError(
                f"--text gives the transcript of one video, but {len(items)} were given; "
                "put a .txt beside each video or let ASR transcribe them."
            )
        if transcripts is not None:
            raise KebrError(f"Give the transcript with --text or in {transcripts} (--transcripts), not both.")
        items[0].text, items[0].text_source = text, "option"
    if transcripts is not None:
        items, _ = attach_transcripts(items, transcripts)
    return items


def _notes(result: ItemResult) -> list[str]:
    notes = []
    if result.no_audio:
        notes.append("no audio track: scored from text and vision")
    elif result.no_speech:
        notes.append("no speech found in the audio track")
    elif result.no_asr:
        notes.append("no ASR (--asr none) and no transcript given")
    if result.no_face:
        notes.append("no face found: scored without vision")
    if result.sample is not None and not result.sample.text.strip():
        notes.append("empty transcript")
    return notes


def predict(
    videos: Sequence[str | Path],
    checkpoint: str | Path,
    *,
    text: str | None = None,
    transcripts: Path | None = None,
    asr: str = "pocketsphinx",
    asr_model: Path | None = None,
    openface_dir: Path | None = None,
    workers: int = 0,
    batch_size: int = 32,
    device: str = "auto",
    max_parameters: int = DEFAULT_MAX_PARAMETERS,
    progress: ProgressFn = no_progress,
    max_duration: float = DEFAULT_MAX_DURATION_S,
    decoding: DecodeProgress | None = None,
) -> list[Prediction]:
    """Score every video (files or folders) with a fine-tuned checkpoint; one Prediction per video,
    in input order. Raises KebrError for a bad checkpoint or options, never for a bad video.
    max_parameters: the largest model built (the user's bound, not the checkpoint's: `model_size`).
    decoding: progress within the video being extracted, as `kebr_core.extract.pipeline.extract`'s."""
    if not videos:
        raise KebrError("Give at least one video to score.")
    if batch_size < 1:
        raise KebrError(f"--batch-size must be at least 1, not {batch_size}.")
    path = checkpoints.resolve_checkpoint(checkpoint, fine_tuned=True)
    saved = checkpoints.read_checkpoint_config(path)
    options = extract_options_for(path, saved.get("features"), asr=asr, asr_model=asr_model,
                                  openface_dir=openface_dir, workers=workers, max_duration=max_duration)
    items = video_items(videos, text, transcripts)
    # Worker processes are forked before the model exists (no torch thread pools in the children).
    executor = start_workers(options) if workers > 0 else None
    results = [Prediction(video=str(it.path)) for it in items]
    pending: list[tuple[int, Sample]] = []
    scored = 0

    def flush() -> None:
        nonlocal scored
        raw = scorer([s for _, s in pending])
        for (k, _), y in zip(pending, raw.tolist()):
            score = float(np.clip(y, -3.0, 3.0))
            cls = sentiment_class(score)
            results[k].raw_score, results[k].score, results[k].sentiment_class = y, score, cls
            results[k].label, results[k].polarity = SENTIMENT_CLASSES[cls], polarity(score)
        scored += len(pending)
        pending.clear()
        progress("score", scored, len(items), {})

    try:
        cfg = RunConfig.from_dict(saved, source=f"checkpoint {path}")
        cfg.train.max_parameters = max_parameters
        scorer = Scorer(path, cfg, bool(saved.get("includes_encoder", False)), resolve_device(device))
        with quiet_native_stderr() if executor is None else nullcontext():
            for k, result in enumerate(ordered_results(items, options, executor, decoding)):
                progress("extract", k + 1, len(items), {})
                if result.sample is None:
                    results[k].error = result.error or "unknown error"
                    continue
                results[k].text = result.sample.text
                results[k].text_source = result.sample.text_source
                results[k].notes = _notes(result)
                pending.append((k, result.sample))
                if len(pending) == batch_size:
                    flush()
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    if pending:
        flush()
    return results

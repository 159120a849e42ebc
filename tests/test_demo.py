"""`kebr demo --quick` through the real CLI: every output it announces exists and is what it says
(stores open, checkpoints load into a KEBRModel, results hold the metrics, plots are PNGs, one
prediction per held-out clip); if espeak-ng's library cannot be loaded the synthetic steps still run."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import TINY_BERT
from kebr_cli.main import app
from kebr_core import speech
from kebr_core.analysis import DPI, FIGSIZE_IN
from kebr_core.config import RunConfig
from kebr_core.data.store import FeatureStore
from kebr_core.extract.vision import MEDIAPIPE_FEATURES
from kebr_core.metrics import METRIC_NAMES
from kebr_core.model import KEBRModel
from kebr_core.recipes import demo_media
from kebr_core.recipes.demo_media import CLEAR, demo_splits, make_demo_clips
from kebr_core.io import path_record
from kebr_core.recipes.demo import CLIP_STEPS, MANIFEST, QUICK, STEPS, right_signs
from kebr_core.recipes.predict import SENTIMENT_CLASSES
from kebr_core.checkpoints import load_checkpoint_weights, read_checkpoint_config

runner = CliRunner()


def announced(outputs: dict) -> list[Path]:
    paths = []
    for value in outputs.values():
        paths += [Path(v) for v in value] if isinstance(value, list) else [Path(value)]
    return paths


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, object]:
    out = tmp_path_factory.mktemp("demo") / "out"
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--text-model", TINY_BERT, "--device", "cpu"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "summary.json").read_text()), result


def test_quick_demo_runs_every_step_and_every_announced_output_exists(demo):
    out, summary, result = demo
    assert list(summary["steps"]) == [step.name for step in STEPS] and summary["quick"] is True and summary["text_model"] == TINY_BERT
    for name, step in summary["steps"].items():
        assert step["status"] == "done", (name, step)
        assert step["outputs"], name
        for path in announced(step["outputs"]):
            assert path.exists(), (name, path)
            assert out in path.parents, path  # everything stays inside --out
        assert name in result.stdout  # the closing table names every step
    assert str(out / "summary.json") in result.stdout.replace("\n", "")
    assert not any("espeak" in note for note in summary["notes"])


def test_demo_stores_match_the_manifest_and_the_synth_size(demo):
    out, summary, _ = demo
    with open(summary["steps"]["clips"]["outputs"]["manifest"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == QUICK.clips and {r["mode"] for r in rows} == {"train", "valid", "test"}
    store = FeatureStore(summary["steps"]["extract"]["outputs"]["store"])
    assert store.ids == [f"{r['video_id']}$_${r['clip_id']}" for r in rows]
    assert store.texts == [r["text"] for r in rows]
    np.testing.assert_allclose(store.labels, [float(r["label"]) for r in rows], atol=1e-6)
    assert [store.sample(i).split for i in range(len(store))] == [r["mode"] for r in rows]
    assert len(store.audio_features) == 33
    audio_len, vision_len = store.lengths()
    assert (audio_len > 40).all()  # ≥ 1 s of speech at 43 frames/s
    assert store.vision_features == list(MEDIAPIPE_FEATURES) and (vision_len > 5).all()  # a face in every clip
    synth = FeatureStore(summary["steps"]["synth"]["outputs"]["store"])
    assert len(synth) == QUICK.synth_n + QUICK.synth_unlabeled


def test_demo_checkpoints_load_into_a_kebr_model(demo):
    _, summary, _ = demo
    checkpoints = [Path(s["outputs"]["checkpoint"]) for s in summary["steps"].values() if "checkpoint" in s["outputs"]]
    assert len(checkpoints) == 3  # pretrain/final, eval/best-model, clips-eval/best-model
    for path in checkpoints:
        cfg = RunConfig.from_dict(read_checkpoint_config(path))
        assert cfg.model.text_model == TINY_BERT
        model = KEBRModel(cfg.model, cfg.mcc)
        load_checkpoint_weights(model, path)
        saved = load_file(str(path / "model.safetensors"))
        state = model.state_dict()
        assert saved and all(torch.equal(state[k], v) for k, v in saved.items())
    clip_cfg = read_checkpoint_config(checkpoints[-1])
    assert clip_cfg["features"]["extractor"]["tool"] == "kebr extract"


def test_demo_results_hold_the_metrics_and_the_plots_are_pngs(demo):
    _, summary, _ = demo
    for step in ("eval", "finetune-clips"):
        results = json.loads(Path(summary["steps"][step]["outputs"]["results"]).read_text())
        assert list(results["mean"]) == list(METRIC_NAMES) and len(METRIC_NAMES) == 8  # 7 of the paper + acc5
        assert results["seeds"] == list(QUICK.seeds)
        assert set(summary["steps"][step]["test"]) == set(METRIC_NAMES)
    ablation = json.loads(Path(summary["steps"]["ablate"]["outputs"]["ablation"]).read_text())
    names = [c["name"] for c in ablation["configurations"]]
    assert names == ["C1", "C4"] and all(c["status"] == "done" and c["mean"] for c in ablation["configurations"])
    plots = [Path(p) for p in summary["steps"]["analyze"]["outputs"]["plots"]]
    assert {p.name for p in plots} >= {"balance.png", "training_curves.png"}
    for plot in plots:
        head = plot.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", head[16:24]) == (round(FIGSIZE_IN[0] * DPI), round(FIGSIZE_IN[1] * DPI))


def test_demo_predicts_every_held_out_clip(demo):
    _, summary, result = demo
    heldout = [Path(p) for p in summary["steps"]["clips"]["outputs"]["heldout"]]
    entries = json.loads(Path(summary["steps"]["predict"]["outputs"]["predictions"]).read_text())
    assert len(entries) == len(heldout) == QUICK.heldout
    for entry, clip, label in zip(entries, heldout, summary["steps"]["clips"]["heldout_labels"]):
        assert entry["video"] == str(clip) and entry["error"] is None
        assert -3 <= entry["score"] <= 3 and entry["label"] == SENTIMENT_CLASSES[entry["sentiment_class"]]
        assert entry["text"] == clip.with_suffix(".txt").read_text().strip() and entry["text_source"] == "sidecar"
        assert entry["expected_label"] == label
    assert "held-out clips" in result.stdout


def test_demo_says_how_long_the_model_trained_and_that_quick_is_a_smoke_test(demo):
    _, summary, result = demo
    record = summary["steps"]["predict"]
    training = record["training"]
    assert training == summary["steps"]["finetune-clips"]["training"] and training["smoke_test"] is True
    assert training["epochs_run"] == QUICK.clip_epochs and 1 <= training["epochs"] <= QUICK.clip_epochs
    n_train = sum(s == "train" for s in demo_splits(QUICK.clips))
    assert training["train_clips"] == n_train and training["steps"] == training["epochs"] * -(-n_train // 4)
    right, clear = right_signs([e["score"] for e in record["predictions"]], summary["steps"]["clips"]["heldout_labels"])
    assert (record["right_sign"], record["clear_clips"]) == (right, clear) and clear == 1  # +2.6 is clear
    out = " ".join(result.stdout.split())
    epochs = f"{training['epochs']} epoch{'s' if training['epochs'] != 1 else ''}"
    assert f"fine-tuned on the demo clips for {epochs} ({training['steps']} steps on {n_train} clips;" in out
    assert f"the best validation MAE of {QUICK.clip_epochs} epochs run in" in out
    assert "a smoke test of the pipeline, not a sentiment model" in out
    assert f"{right} of 1 clearly positive or negative held-out clips got the right sign" in out


def test_right_signs_hand_values():
    # clear: +2.6 (right), -2.4 (wrong), -1.0 (right), +1.5 (unscored: wrong); 0.0 and +0.8 are not clear
    assert right_signs([1.2, 0.3, -0.1, None, -2.0, -0.4], [2.6, -2.4, -1.0, 1.5, 0.0, 0.8]) == (2, 4)
    assert right_signs([0.0], [2.0]) == (0, 1)  # a score of 0 has no sign


def test_making_the_demo_clips_twice_gives_the_same_bytes(tmp_path: Path):
    """Both of the demo's voices, a wall-clock second apart: espeak-ng seeded its random generator with
    time(NULL) until kebr_core/espeak_worker.py reseeded it, and the f3 clips (every other one) differed."""
    import time

    first = make_demo_clips(tmp_path / "a", n=3, heldout=2)
    demo_media.speech.cache_clear()  # speak again, as a second `kebr demo` does
    time.sleep(1.02 - time.time() % 1)
    again = make_demo_clips(tmp_path / "b", n=3, heldout=2)
    files = sorted(p.relative_to(first.root) for p in first.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    assert len(files) == 3 + 2 * 2 + 1  # the clips, the held-out clips and their transcripts, label.csv
    assert [f for f in files if (first.root / f).read_bytes() != (again.root / f).read_bytes()] == []


# The clip half of `kebr demo`, in a process of its own as the demo runs it (torch's one thread, no speech
# cached by other tests). It is repeatable: two runs of each stage gave byte-identical clips, identical
# HDF5 arrays and identical weights and scores. (Run-to-run variation once blamed on MediaPipe/OpenCV
# being loaded was espeak-ng seeding its generator with the wall-clock second; kebr_core/espeak_worker.py.)
FULL_DEMO_CLIPS = """
import json, sys
from pathlib import Path
import torch
from kebr_core.config import DEFAULT_TEXT_MODEL
from kebr_core.recipes.demo_media import make_demo_clips
from kebr_core.extract.pipeline import ExtractOptions, extract, read_manifest
from kebr_core.recipes.demo import FULL, clip_config
from kebr_core.recipes.finetune import finetune
from kebr_core.recipes.predict import predict
root = Path(sys.argv[1])
torch.set_num_threads(1)  # as `kebr demo`
made = make_demo_clips(root / "clips", n=FULL.clips, heldout=FULL.heldout)
extract(read_manifest(made.manifest, made.root), root / "clips.h5", ExtractOptions(vision="mediapipe", asr="none", workers=0))
finetune(root / "clips.h5", root / "run", clip_config(DEFAULT_TEXT_MODEL, "cpu", FULL), seeds=FULL.seeds[:1])
scores = [p.score for p in predict(made.heldout, root / "run" / "best-model", asr="none", device="cpu")]
print(json.dumps({"scores": scores, "labels": list(made.heldout_labels)}))
"""


@pytest.mark.slow
def test_the_full_demo_model_ranks_every_clear_held_out_clip_and_gets_most_signs(tmp_path: Path):
    """The full demo's clip half as `kebr demo` runs it (its clips, extraction, fine-tuning config and
    held-out clips, the embedded MiniLM, a fresh process): every clearly positive held-out sentence scores
    above every clearly negative one, and at most one of the 6 gets a score of the wrong sign.

    Why not all 6 signs: the run is repeatable, and with the clips' speech as kebr makes it (espeak-ng's
    generator at espeak_worker.SEED = 1) this machine gives 5 of 6 every time ("the story was awful and
    the acting was bad", -2.6, scores +0.24). The f3 voice's breath noise, which carries no sentiment,
    moves that: the same pipeline with the generator at seeds 2-8 gave 6 of 6, and the wall-clock
    seeds of earlier sessions 6, 6, 5, 6, 3, 6 and 6. The ranking held at all 8 seeds (the smallest gap
    between the clear positives and negatives: 1.45 at seed 1)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FULL_DEMO_CLIPS, str(tmp_path)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    scored = list(zip(got["scores"], got["labels"]))
    right, clear = right_signs(got["scores"], got["labels"])
    positive = [score for score, label in scored if label >= CLEAR]
    negative = [score for score, label in scored if label <= -CLEAR]
    assert clear == 6 and min(positive) > max(negative) and right >= clear - 1, scored


def test_demo_refuses_an_existing_demo_without_force(demo):
    out, _, _ = demo
    again = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 1
    assert "already holds a demo" in again.stderr and "--force" in again.stderr


def test_demo_without_speech_runs_the_synthetic_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "summary.json").write_text("{}")  # a previous demo (its record matches it): --force replaces it
    (out / MANIFEST).write_text(json.dumps({"paths": {"summary.json": path_record(out / "summary.json")}}))
    (out / "keep.txt").write_text("mine")  # not the demo's: --force leaves it
    (out / "runs" / "pretrain").mkdir(parents=True)  # a user's own run under runs/: left alone too
    (out / "runs" / "pretrain" / "config.json").write_text("{}")
    monkeypatch.setattr(speech, "available", lambda: False)  # as if espeakng-loader's library did not load
    result = runner.invoke(app, ["demo", "--quick", "--force", "--out", str(out), "--text-model", TINY_BERT,
                                 "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert (out / "keep.txt").read_text() == "mine" and (out / "runs" / "pretrain" / "config.json").read_text() == "{}"
    summary = json.loads((out / "summary.json").read_text())
    for name, step in summary["steps"].items():
        if name in CLIP_STEPS:
            assert step["status"] == "skipped" and "espeak-ng could not be loaded" in step["reason"]
        else:
            assert step["status"] == "done" and all(p.exists() for p in announced(step["outputs"]))
    assert any("pip install espeakng-loader" in note for note in summary["notes"])
    assert "pip install espeakng-loader" in result.stdout.replace("\n", " ")
    assert not (out / "clips").exists() and not (out / "predictions.json").exists()


def test_demo_force_refuses_paths_it_did_not_make(tmp_path: Path) -> None:
    """A path the demo would write that no demo manifest lists is a user's: refused, named, kept."""
    out = tmp_path / "demo"
    (out / "runs" / "ablate").mkdir(parents=True)
    (out / "runs" / "ablate" / "mine.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "--quick", "--force", "--out", str(out), "--text-model", TINY_BERT])
    assert result.exit_code == 1
    assert "runs/ablate" in result.stderr and "no finished demo recorded making" in result.stderr
    assert (out / "runs" / "ablate" / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize("planted", [
    {"paths": ["clips", "runs/ablate"]},  # an older demo's list of names: proves nothing
    {"paths": {"clips": {"files": 1, "sha256": "0" * 64}, "runs/ablate": None}},  # records that do not match
])
def test_demo_force_keeps_a_users_folders_that_a_planted_manifest_lists(tmp_path: Path, planted: dict) -> None:
    """A manifest someone else wrote cannot make --force remove a user's own folders: only paths still as a
    finished demo recorded them (io.path_record) are the demo's."""
    out = tmp_path / "demo"
    (out / "clips").mkdir(parents=True)
    (out / "clips" / "holiday.mp4").write_bytes(b"mine")
    (out / "runs" / "ablate").mkdir(parents=True)
    (out / "runs" / "ablate" / "notes.txt").write_text("mine")
    (out / MANIFEST).write_text(json.dumps(planted))
    result = runner.invoke(app, ["demo", "--quick", "--force", "--out", str(out), "--text-model", TINY_BERT])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "clips" in result.stderr and "runs/ablate" in result.stderr and "no finished demo recorded" in result.stderr
    assert (out / "clips" / "holiday.mp4").read_bytes() == b"mine"
    assert (out / "runs" / "ablate" / "notes.txt").read_text() == "mine"

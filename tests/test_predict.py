"""Tests of `kebr predict` (kebr_core.recipes.predict, kebr_cli/predict.py) on real media: clips made
with espeak-ng over a real face photo are extracted with a manifest into a store, a model is fine-tuned
on it for one epoch (tiny random BERT, frozen encoder), and that checkpoint scores new files: a good
clip, a corrupt file, a clip without an audio track. A test clip scored by `kebr predict` must get the
very prediction the fine-tuning run wrote for it (same extraction settings, same model)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_BERT
from kebr_cli.main import app
from kebr_core.config import RunConfig
from kebr_core.data.store import FeatureStore
from kebr_core.data.synth import SynthConfig, generate_synth
from kebr_core.errors import KebrError
from kebr_core.extract.extractor import ExtractOptions
from kebr_core.extract.inputs import read_manifest
from kebr_core.extract.pipeline import extract
from kebr_core.recipes.finetune import finetune
from kebr_core.recipes.predict import SENTIMENT_CLASSES, polarity, predict, sentiment_class

import media  # tests/media.py

runner = CliRunner()


def tiny_config(epochs: int = 1) -> RunConfig:
    cfg = RunConfig()
    cfg.model.text_model = TINY_BERT
    cfg.model.layers = 1
    cfg.train.epochs, cfg.train.batch_size, cfg.train.device, cfg.train.lr = epochs, 4, "cpu", 1e-3
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Demo clips → store (manifest text, labels, splits) → a 1-epoch fine-tuned checkpoint."""
    from kebr_core.recipes.demo_media import make_demo_clips

    root = tmp_path_factory.mktemp("predict")
    clips = make_demo_clips(root / "clips", n=6, heldout=1, fps=10)
    store = root / "clips.h5"
    summary = extract(read_manifest(clips.manifest, clips.root), store, ExtractOptions(vision="mediapipe", asr="none", workers=0))
    assert summary.done == 6 and summary.failed == 0
    run = root / "run"
    finetune(store, run, tiny_config(), seeds=[0])
    return {"root": root, "clips": clips, "store": store, "run": run, "checkpoint": run / "best-model"}


def test_sentiment_class_and_polarity_hand_values():
    # round half to even, as Acc-7 (docs/design.md §7); neutral is class 0, so |score| <= 0.5
    cases = {2.5: (2, "positive"), -0.5: (0, "neutral"), 0.5: (0, "neutral"), 0.51: (1, "positive"),
             -0.51: (-1, "negative"), -1.5: (-2, "negative"), 3.7: (3, "positive"), -9.0: (-3, "negative"), 0.0: (0, "neutral")}
    for score, (cls, pol) in cases.items():
        assert sentiment_class(score) == cls and polarity(score) == pol, score
    assert str(sentiment_class(-0.2)) == "0"  # no "-0"
    assert SENTIMENT_CLASSES[-3] == "highly negative" and SENTIMENT_CLASSES[1] == "weakly positive"


def test_predict_reproduces_the_finetuning_prediction_of_a_test_clip(trained: dict):
    store = FeatureStore(trained["store"])
    with open(trained["run"] / "seed-0" / "predictions.csv") as f:
        expected = {row["id"]: float(row["prediction"]) for row in csv.DictReader(f)}
    sample_id = next(iter(expected))  # a test-split clip
    i = store.ids.index(sample_id)
    video_id, clip_id = sample_id.split("$_$")
    video = trained["clips"].root / video_id / f"{clip_id}.mp4"

    result = runner.invoke(app, ["predict", str(video), "--model", str(trained["run"]), "--text", store.text(i),
                                 "--asr", "none", "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert entry["raw_score"] == pytest.approx(expected[sample_id], abs=1e-4)
    assert entry["score"] == pytest.approx(float(np.clip(expected[sample_id], -3, 3)), abs=1e-4)
    assert entry["text"] == store.text(i) and entry["text_source"] == "option" and entry["error"] is None


def test_predict_scores_good_and_no_audio_clips_and_gives_the_corrupt_ones_reason(trained: dict, tmp_path: Path):
    good = trained["clips"].heldout[0]  # with a sidecar transcript beside it
    noaudio = media.make_clip(tmp_path / "noaudio.mp4", "the film was fine", audio=False, fps=10).path
    corrupt = media.make_corrupt(tmp_path / "corrupt.mp4", like=good)
    out = tmp_path / "out" / "predictions.json"

    result = runner.invoke(app, ["predict", str(good), str(corrupt), str(noaudio), "--model", str(trained["checkpoint"]),
                                 "--asr", "none", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert json.loads(out.read_text()) == entries
    assert [e["video"] for e in entries] == [str(good), str(corrupt), str(noaudio)]
    ok, bad, silent = entries

    for e in (ok, silent):  # scored: the score is the clipped raw output, class and polarity follow it
        assert e["error"] is None and -3 <= e["score"] <= 3
        assert e["score"] == pytest.approx(min(3.0, max(-3.0, e["raw_score"])))
        assert e["sentiment_class"] == int(np.round(e["score"])) + 0
        assert e["label"] == SENTIMENT_CLASSES[e["sentiment_class"]]
        assert e["polarity"] == ("positive" if e["sentiment_class"] > 0 else "negative" if e["sentiment_class"] < 0 else "neutral")
    assert ok["text"] == good.with_suffix(".txt").read_text().strip() and ok["text_source"] == "sidecar"
    assert ok["notes"] == []
    assert silent["notes"][0].startswith("no audio track") and "empty transcript" in silent["notes"]
    assert bad["score"] is None and bad["polarity"] is None
    assert str(corrupt) in bad["error"] and bad["notes"] == []

    # The same videos through the library, one per batch: batching does not change a score.
    singles = predict([good, corrupt, noaudio], trained["checkpoint"], asr="none", batch_size=1)
    assert [p.raw_score for p in singles] == pytest.approx([ok["raw_score"], None, silent["raw_score"]], abs=1e-5)

    # The table names every video and the reason of the corrupt one.
    table = runner.invoke(app, ["predict", str(good), str(corrupt), "--model", str(trained["checkpoint"]), "--asr", "none"],
                          env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    assert "1 of 2 video(s) scored" in table.output and "not scored" in table.output
    assert "cannot be opened" in table.output or "cannot be decoded" in table.output or "Invalid data" in table.output


def test_predict_exits_non_zero_only_when_nothing_was_scored(trained: dict, tmp_path: Path):
    corrupt = media.make_corrupt(tmp_path / "corrupt.mp4")
    empty = media.make_empty(tmp_path / "empty.mov")
    result = runner.invoke(app, ["predict", str(corrupt), str(empty), "--model", str(trained["checkpoint"]), "--asr", "none", "--json"])
    assert result.exit_code == 1
    entries = json.loads(result.stdout)
    assert all(e["score"] is None for e in entries) and "empty" in entries[1]["error"]
    assert "none of the 2 video(s) could be scored" in result.stderr


def test_predict_refuses_a_checkpoint_trained_on_synthetic_features(trained: dict, tmp_path: Path):
    synth = tmp_path / "synth.h5"
    generate_synth(synth, SynthConfig(n=40, audio_len=(5, 10), vision_len=(2, 5)))
    finetune(synth, tmp_path / "synth-run", tiny_config(), seeds=[0])
    good = trained["clips"].heldout[0]
    result = runner.invoke(app, ["predict", str(good), "--model", str(tmp_path / "synth-run"), "--asr", "none"])
    assert result.exit_code == 1
    assert "made by kebr synth" in result.stderr and "cannot be computed from videos" in result.stderr
    assert "Traceback" not in result.output
    assert ROUTE in " ".join(result.stderr.split())  # the way that works

    # A checkpoint without a feature record (e.g. pretraining's) and one whose names differ.
    ckpt = tmp_path / "copy"
    shutil.copytree(trained["checkpoint"], ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "features"}))
    with pytest.raises(KebrError, match="does not record the features"):
        predict([good], ckpt, asr="none")
    cfg["features"]["audio_features"] = ["f0"] + cfg["features"]["audio_features"][1:]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(KebrError, match="audio features that this kebr does not compute"):
        predict([good], ckpt, asr="none")


def test_predict_option_errors_are_one_sentence(trained: dict, tmp_path: Path):
    good = trained["clips"].heldout[0]
    two = runner.invoke(app, ["predict", str(good), str(good), "--model", str(trained["checkpoint"]), "--text", "hi"])
    assert two.exit_code == 1 and "--text gives the transcript of one video, but 2 were given" in two.stderr
    nowhere = runner.invoke(app, ["predict", str(good), "--model", str(tmp_path / "missing")])
    assert nowhere.exit_code == 1 and "does not exist" in nowhere.stderr
    not_ckpt = runner.invoke(app, ["predict", str(good), "--model", str(tmp_path)])
    assert not_ckpt.exit_code == 1 and "is not a fine-tuned checkpoint" in not_ckpt.stderr
    assert math.isfinite(predict([good], trained["checkpoint"], asr="none")[0].score)


def test_one_resolver_finds_fine_tuned_models_and_refuses_other_folders(tmp_path: Path):
    from kebr_core import checkpoints, runs

    def model_folder(path: Path, config: bool = True) -> Path:
        path.mkdir(parents=True)
        (path / runs.WEIGHTS).write_bytes(b"")
        if config:
            (path / runs.CONFIG).write_text("{}")
        return path

    eval_run = tmp_path / "eval"
    best = model_folder(eval_run / runs.BEST_MODEL)
    assert checkpoints.resolve_checkpoint(eval_run, fine_tuned=True) == best
    assert checkpoints.resolve_checkpoint(best, fine_tuned=True) == best
    # A pretraining run: its final/ is a checkpoint to fine-tune from, not a model that scores videos.
    pretrain_run = tmp_path / "pretrain"
    final = model_folder(pretrain_run / runs.FINAL, config=False)
    assert checkpoints.resolve_checkpoint(pretrain_run) == final
    with pytest.raises(KebrError, match="is not a fine-tuned checkpoint .*give the best-model/ folder"):
        checkpoints.resolve_checkpoint(pretrain_run, fine_tuned=True)
    with pytest.raises(KebrError, match="does not exist"):
        checkpoints.resolve_checkpoint(tmp_path / "missing", fine_tuned=True)


def test_predict_reads_a_transcript_table(trained: dict, tmp_path: Path):
    store = FeatureStore(trained["store"])
    with open(trained["run"] / "seed-0" / "predictions.csv") as f:
        expected = {row["id"]: float(row["prediction"]) for row in csv.DictReader(f)}
    sample_id = next(iter(expected))  # a test-split clip: the table gives it its manifest text
    video_id, clip_id = sample_id.split("$_$")
    table = tmp_path / "transcripts.tsv"
    table.write_text(f"id\ttext\n{video_id}/{clip_id}.mp4\t{store.text(store.ids.index(sample_id))}\n"
                     "heldout/heldout0\tnot what the sidecar says\nsomewhere/else\tno such video\n")
    root = trained["clips"].root  # a folder: ids are paths below it
    result = runner.invoke(app, ["predict", str(root), "-c", str(trained["run"]), "--transcripts", str(table),
                                 "--asr", "none", "--json"])
    assert result.exit_code == 0, result.output
    entries = {Path(e["video"]).relative_to(root).with_suffix("").as_posix(): e for e in json.loads(result.stdout)}
    clip = entries[f"{video_id}/{clip_id}"]
    assert clip["text_source"] == "table" and clip["raw_score"] == pytest.approx(expected[sample_id], abs=1e-4)
    held = entries["heldout/heldout0"]
    assert held["text"] == "not what the sidecar says" and held["text_source"] == "table"  # before the sidecar
    others = [e for key, e in entries.items() if key not in (f"{video_id}/{clip_id}", "heldout/heldout0")]
    assert others and all(e["text_source"] == "asr:none" and e["text"] == "" for e in others)

    # Two files with the same name: the table cannot tell them apart; --text and a table: one or the other.
    a, b = (str(root / vid / "0.mp4") for vid in sorted({i.split("$_$")[0] for i in store.ids})[:2])
    twins = tmp_path / "twins.csv"
    twins.write_text("id,text\n0,hello\n")
    result = runner.invoke(app, ["predict", a, b, "-c", str(trained["run"]), "--transcripts", str(twins)])
    assert result.exit_code == 1 and "The id '0' in" in result.stderr and "names 2 videos" in result.stderr
    result = runner.invoke(app, ["predict", a, "-c", str(trained["run"]), "--transcripts", str(twins), "--text", "hi"])
    assert result.exit_code == 1 and "not both" in result.stderr and "Traceback" not in result.output


ROUTE = ("to score videos, extract labeled videos with `kebr extract` (e.g. raw MOSI clips: kebr extract --manifest "
         "label.csv -o feats.h5), fine-tune on them with `kebr eval -d feats.h5 --out RUN`, then `kebr predict VIDEO "
         "--model RUN/best-model`.")


def test_a_model_pretrained_on_own_clips_is_refused_naming_the_route_that_scores(trained: dict, tmp_path: Path):
    """Pretraining on own clips gives no model that scores them (issue 27, item 10): predict says what does."""
    pre = tmp_path / "pre"
    r = runner.invoke(app, ["pretrain", str(trained["store"]), "-o", str(pre), "--epochs", "1", "--text-model", TINY_BERT,
                            "--batch-size", "4", "--pretrain-on-test"])
    assert r.exit_code == 0, r.output
    result = runner.invoke(app, ["predict", str(trained["clips"].heldout[0]), "--model", str(pre / "final"), "--asr", "none"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = " ".join(result.stderr.split())
    assert message.startswith("error: Checkpoint") and ROUTE in message and message.replace("e.g. ", "").count(". ") == 0, message


def test_predict_gives_a_ten_hour_video_its_reason_quickly(trained: dict, tmp_path: Path):
    """A 1.5 kB video whose second picture is ten hours in: before `--max-duration`, face detection was fed
    360,000 pictures (a hang). In a child process under a time limit (tests/hostile.py); the good clip is scored."""
    from tests.hostile import assert_within_limits, run_hostile

    good = trained["clips"].heldout[0]
    long = media.make_ten_hour_clip(tmp_path / "long.mp4")
    result = run_hostile(["predict", str(good), long.name, "--model", str(trained["checkpoint"]), "--asr", "none",
                          "--json", "--max-duration", "600"], tmp_path, time_limit_s=120, rss_limit_mb=2000)
    assert_within_limits(result)
    assert result.code == 0, result.describe()
    entries = json.loads(result.output[result.output.index("[\n"): result.output.rindex("]") + 1])  # stdout's JSON list
    assert entries[0]["score"] is not None and entries[1]["score"] is None
    assert "its pictures run to 36000 s, past the 600 s that are decoded at most; raise --max-duration" in entries[1]["error"]


def test_predict_shows_the_seconds_decoded_and_scores_a_video_whose_header_declares_ten_hours(
        trained: dict, tmp_path: Path, ticking_cli_clock, monkeypatch):
    """Two seconds of pictures under a header of 36000 s: scored in seconds, and the progress of its pictures
    (one line per event here: --verbose, a clock of 2 s a look) runs from the header's estimate, capped at
    --max-duration, to the two seconds the file holds (tests/test_extract_progress.py has the details)."""
    media.make_long_header_clip(tmp_path / "long.mkv")
    monkeypatch.chdir(tmp_path)  # the bars name a video as it was given
    result = runner.invoke(app, ["-v", "predict", "long.mkv", "--model", str(trained["checkpoint"]), "--asr", "none",
                                 "--json", "--max-duration", "600"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["score"] is not None
    lines = [line for line in result.stderr.splitlines() if line.startswith("long.mkv: seconds of pictures: ")]
    assert lines[0] == "long.mkv: seconds of pictures: 0/600 (0%)", result.stderr
    assert lines[-1] == "long.mkv: seconds of pictures: 2/2 (100%)", result.stderr


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "fine-tuned"])
def test_a_copied_best_model_predicts_alone_after_the_run_and_text_model_are_deleted(trained: dict, tmp_path: Path,
                                                                                      freeze: bool):
    """Issue 26: fine-tune with --text-model a LOCAL folder, copy best-model/ alone, delete the run and the text
    model's folder: `kebr predict --model copy/` and `KEBRModel.from_pretrained(copy)` still give the clip the
    prediction the fine-tuning run wrote for it."""
    from kebr_core.model import KEBRModel
    from kebr_core.text_encoder import load_text_encoder, load_tokenizer
    from kebr_core.recipes.predict import Scorer

    text_model = tmp_path / "text-model"
    load_text_encoder(TINY_BERT).save_pretrained(str(text_model))
    load_tokenizer(TINY_BERT).save_pretrained(str(text_model))
    run = tmp_path / "run"
    r = runner.invoke(app, ["eval", "-d", str(trained["store"]), "-o", str(run), "--text-model", str(text_model),
                            "--epochs", "1", "--seeds", "1", "--batch-size", "4", "--layers", "1", "--lr", "1e-3",
                            *(["--freeze-encoder"] if freeze else [])])
    assert r.exit_code == 0, r.output
    store = FeatureStore(trained["store"])
    with open(run / "seed-0" / "predictions.csv") as f:
        expected = {row["id"]: float(row["prediction"]) for row in csv.DictReader(f)}
    sample_id = next(iter(expected))
    i = store.ids.index(sample_id)
    video_id, clip_id = sample_id.split("$_$")
    video = trained["clips"].root / video_id / f"{clip_id}.mp4"

    card = (run / "best-model" / "README.md").read_text()  # the extractors a video must go through, named
    assert "from the `kebr33` set of `kebr extract`" in card and "`mediapipe` backend at 10.0 fps" in card
    assert "kebr predict clip.mp4 --model THIS_FOLDER" in card
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run / "best-model", copy)
    shutil.rmtree(run)
    shutil.rmtree(text_model)
    result = runner.invoke(app, ["predict", str(video), "--model", str(copy), "--text", store.text(i), "--asr", "none", "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert entry["raw_score"] == pytest.approx(expected[sample_id], abs=1e-4)

    model = KEBRModel.from_pretrained(copy)
    scorer = Scorer(copy, model.run_config, bool(model.checkpoint_config["includes_encoder"]), torch.device("cpu"))
    scorer.model = model  # the model from_pretrained built, scored the way kebr predict scores
    assert scorer([store.sample(i)])[0] == pytest.approx(expected[sample_id], abs=1e-4)

"""Self-contained model folders (kebr_core/model.py, model_card.py) and `kebr export` (recipes/export.py).

Runs are trained through the real CLI on tiny stores. The text model is given as a LOCAL folder (the tiny
random BERT saved with save_pretrained), which is deleted before the copied model folder is loaded again:
the prediction must not change. The scoring of a real clip with `kebr predict` is in tests/test_predict.py
(`test_a_copied_best_model_predicts_alone_after_the_run_and_text_model_are_deleted`); here the predictions
are checked against predictions.csv on the store's own test samples. Hub uploads are mocked (no network).
"""

from __future__ import annotations

import csv
import fnmatch
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import TINY_BERT, write_tiny_store
from kebr_cli.main import app
from kebr_core import checkpoints, runs
from kebr_core.config import RunConfig
from kebr_core.data.dataset import Collator
from kebr_core.data.store import FeatureStore
from kebr_core.errors import KebrError
from kebr_core.masking import tokenize_plain
from kebr_core.model import KEBRModel
from kebr_core.text_encoder import load_text_encoder, load_tokenizer
from kebr_core.own_files import RECORD

runner = CliRunner()
EVAL = ["--epochs", "1", "--seeds", "2", "--batch-size", "8", "--layers", "1"]


def save_local_text_model(folder: Path) -> Path:
    """The tiny random BERT of tests/conftest.py as a local Hugging Face folder (what --text-model PATH takes)."""
    load_text_encoder(TINY_BERT).save_pretrained(str(folder))
    load_tokenizer(TINY_BERT).save_pretrained(str(folder))
    return folder


def predictions_of(model: KEBRModel, store_path: Path, ids: list[str]) -> np.ndarray:
    """(N,) float64 predictions of a loaded model for the store samples `ids`, as the fine-tuning run made them
    (frozen encoder outside autocast, float32 throughout on the CPU)."""
    store = FeatureStore(store_path)
    rows = [store.ids.index(i) for i in ids]
    token_ids = tokenize_plain([store.text(r) for r in rows], model.tokenizer, model.run_config.model.max_text_len)
    items = [{"index": k, "input_ids": np.asarray(t, np.int64), "audio": store.sample(r).audio,
              "vision": store.sample(r).vision, "label": float("nan")} for k, (r, t) in enumerate(zip(rows, token_ids))]
    batch = Collator.from_config(model.run_config.model, model.tokenizer.pad_token_id)(items)
    with torch.no_grad():
        return model(batch, task="finetune").pred.double().numpy()


def written_predictions(run: Path, seed: int) -> dict[str, float]:
    with open(runs.seed_dir(run, seed) / runs.PREDICTIONS_CSV) as f:
        return {row["id"]: float(row["prediction"]) for row in csv.DictReader(f)}


def weight_names(folder: Path) -> set[str]:
    with safe_open(str(folder / runs.WEIGHTS), framework="pt") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`kebr eval` (2 seeds, frozen encoder) with --text-model a local folder, on a tiny store."""
    root = tmp_path_factory.mktemp("sharing")
    store = write_tiny_store(root / "tiny.h5", n=40)
    text_model = save_local_text_model(root / "text-model")
    run = root / "run"
    r = runner.invoke(app, ["eval", "-d", str(store), "-o", str(run), "--text-model", str(text_model), "--freeze-encoder", *EVAL])
    assert r.exit_code == 0, r.output
    return {"root": root, "store": store, "text_model": text_model, "run": run}


def test_a_copied_best_model_loads_alone_and_predicts_the_same(local_run: dict, tmp_path: Path):
    run, store = local_run["run"], local_run["store"]
    seed = json.loads((run / runs.BEST_MODEL / runs.SELECTION).read_text())["seed"]
    expected = written_predictions(run, seed)
    copy = tmp_path / "copy"
    shutil.copytree(run / runs.BEST_MODEL, copy)
    moved = tmp_path / "gone"  # the run and the text model's folder disappear (moved away, restored after)
    shutil.move(str(run), moved / "run")
    shutil.move(str(local_run["text_model"]), moved / "text-model")
    try:
        model = KEBRModel.from_pretrained(copy)
        ids = list(expected)
        np.testing.assert_allclose(predictions_of(model, store, ids), [expected[i] for i in ids], atol=1e-5)
        assert model.run_config.model.text_model == str(local_run["text_model"])  # recorded, never needed
        # the frozen encoder's weights are in text-encoder/, not twice
        assert (copy / runs.TEXT_ENCODER / runs.WEIGHTS).is_file()
        assert not any(k.startswith("encoder.") for k in weight_names(copy))
    finally:
        shutil.move(str(moved / "run"), run)
        shutil.move(str(moved / "text-model"), local_run["text_model"])


def test_the_model_card_says_what_the_model_is_its_data_and_its_test_metrics(local_run: dict):
    run = local_run["run"]
    card = (run / runs.BEST_MODEL / runs.MODEL_CARD).read_text()
    results = json.loads((run / runs.RESULTS_JSON).read_text())
    fingerprint = json.loads((run / runs.CONFIG).read_text())["data"]
    assert card.startswith("---\nlanguage: en\nlibrary_name: kebr")
    assert "Knowledge Enhanced Self-Supervised Balanced Representation" in card and "@inproceedings" in card
    assert fingerprint["content_sha256"] in card and "splits (labeled samples): train 24, valid 8, test 8" in card
    assert "Over 2 fine-tuning seed(s) 0, 1" in card and "sample std, ddof 1" in card
    mae_row = f"| MAE | {results['mean']['mae']:.4f} | {results['std']['mae']:.4f} |"
    acc_row = f"| Acc-2 (non0) | {100 * results['mean']['acc2_non0']:.2f} | {100 * results['std']['acc2_non0']:.2f} |"
    assert mae_row in card and acc_row in card
    assert "English only" in card and "VADER" in card
    assert "made by something other than kebr extract (7 audio, 5 vision per frame)" in card


def test_a_frozen_resolvable_encoder_is_not_stored_and_a_fine_tuned_one_only_once(tmp_path: Path):
    """#27 item 11: a frozen encoder that every machine resolves by name (random-bert:, the embedded MiniLM)
    adds nothing but the tokenizer to best-model/; a fine-tuned one is stored once (model.safetensors), its
    architecture beside it when its name is a local path."""
    store = write_tiny_store(tmp_path / "tiny.h5", n=30)
    text_model = save_local_text_model(tmp_path / "text-model")
    cases = {"frozen-name": [TINY_BERT, "--freeze-encoder"], "tuned-name": [TINY_BERT],
             "tuned-path": [str(text_model)]}
    for name, (model, *freeze) in cases.items():
        r = runner.invoke(app, ["eval", "-d", str(store), "-o", str(tmp_path / name), "--text-model", model, *freeze,
                                "--epochs", "1", "--seeds", "1", "--batch-size", "8", "--layers", "1"])
        assert r.exit_code == 0, r.output
    encoder_keys = {f"encoder.{k}" for k in load_text_encoder(TINY_BERT).state_dict()}
    frozen, tuned, tuned_path = (tmp_path / n / runs.BEST_MODEL for n in cases)
    side = runs.TEXT_ENCODER
    assert not weight_names(frozen) & encoder_keys and not (frozen / side / "config.json").exists()
    assert (frozen / side / "tokenizer_config.json").is_file()  # the tokenizer, always
    assert encoder_keys <= weight_names(tuned) and not (tuned / side / "config.json").exists()
    assert encoder_keys <= weight_names(tuned_path) and (tuned_path / side / "config.json").is_file()
    assert not (tuned_path / side / runs.WEIGHTS).exists()  # not a second copy
    assert json.loads((tuned_path / runs.CONFIG).read_text())["text_encoder"] == {
        "tokenizer": side, "architecture": side, "weights": runs.WEIGHTS}
    # the frozen model's folder is the fusion and heads, no encoder: a fraction of the fine-tuned one
    assert (frozen / runs.WEIGHTS).stat().st_size < 0.5 * (tuned / runs.WEIGHTS).stat().st_size
    # a fine-tuned encoder rebuilt from text-encoder/config.json + model.safetensors predicts as trained
    shutil.rmtree(text_model)
    model = KEBRModel.from_pretrained(tmp_path / "tuned-path")
    expected = written_predictions(tmp_path / "tuned-path", 0)
    np.testing.assert_allclose(predictions_of(model, store, list(expected)), list(expected.values()), atol=1e-5)


def test_a_folder_in_the_layout_before_text_encoder_still_loads(tmp_path: Path):
    """Older folders: model.safetensors + config.json only (written by checkpoints.save_checkpoint, today's writer
    without the extra files); the encoder and tokenizer load by name."""
    cfg = RunConfig()
    cfg.model.text_model, cfg.model.d_audio, cfg.model.d_vision, cfg.model.layers = TINY_BERT, 7, 5, 1
    torch.manual_seed(0)
    model = KEBRModel(cfg.model, cfg.mcc).eval()
    checkpoints.save_checkpoint(tmp_path / "old", model, cfg, include_encoder=False, extra={"stage": "finetune"})
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == [RECORD, "config.json", "model.safetensors"]
    loaded = KEBRModel.from_pretrained(tmp_path / "old")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    # a folder without the fine-tuning head's weights is refused naming one, not loaded half-random
    state = {k: v for k, v in load_file(str(tmp_path / "old" / runs.WEIGHTS)).items() if not k.startswith("finetune_head.")}
    save_file(state, str(tmp_path / "old" / runs.WEIGHTS))
    with pytest.raises(KebrError, match=r"lacks weights the model needs, e.g. finetune_head\."):
        KEBRModel.from_pretrained(tmp_path / "old")


def test_kebr_export_writes_a_self_contained_folder_and_refuses_what_is_not_a_model(local_run: dict, tmp_path: Path):
    run, out = local_run["run"], tmp_path / "share" / "kebr-tiny"
    r = runner.invoke(app, ["export", str(run), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["stage"] == "finetune" and {"config.json", "model.safetensors", "README.md",
                                              "text-encoder/model.safetensors", "text-encoder/config.json"} <= set(report["files"])
    assert "selection.json" not in report["files"] and not (tmp_path / "share" / "kebr-tiny.tmp").exists()
    assert "Over 2 fine-tuning seed(s)" in (out / "README.md").read_text()
    a, b = KEBRModel.from_pretrained(out), KEBRModel.from_pretrained(run / runs.BEST_MODEL)
    for name, value in b.state_dict().items():
        torch.testing.assert_close(a.state_dict()[name], value, rtol=0, atol=0)

    # refused in one sentence, nothing written: an existing folder without --force, a folder that is not kebr's
    before = sorted(p.name for p in out.rglob("*"))
    r = runner.invoke(app, ["export", str(run), "-o", str(out)])
    assert r.exit_code == 1 and "already exists; pass --force" in r.stderr and "Traceback" not in r.output
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    r = runner.invoke(app, ["export", str(run), "-o", str(foreign), "--force"])
    assert r.exit_code == 1 and "is not a kebr model folder" in r.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    r = runner.invoke(app, ["export", str(foreign), "-o", str(tmp_path / "x")])
    assert r.exit_code == 1 and "is not a kebr run or model folder" in r.stderr and not (tmp_path / "x").exists()
    r = runner.invoke(app, ["export", str(run), "-o", str(run / runs.BEST_MODEL / "inside")])
    assert r.exit_code == 1 and "inside the model it exports" in r.stderr
    assert sorted(p.name for p in out.rglob("*")) == before
    r = runner.invoke(app, ["export", str(run / runs.BEST_MODEL), "-o", str(out), "--force"])  # a model folder itself
    assert r.exit_code == 0, r.output


def test_kebr_export_of_a_pretraining_and_a_mocked_push_to_hub(tmp_path: Path, monkeypatch):
    """`--push-to-hub` creates the repository and uploads the finished folder in one commit (HfApi mocked:
    the test machine has no network); a failing upload is one sentence and leaves the folder complete."""
    import huggingface_hub
    from huggingface_hub.errors import OfflineModeIsEnabled

    store = write_tiny_store(tmp_path / "tiny.h5", n=30)
    pre = tmp_path / "pre"
    r = runner.invoke(app, ["pretrain", "-d", str(store), "-o", str(pre), "--epochs", "1", "--text-model", TINY_BERT,
                            "--batch-size", "8", "--layers", "1"])
    assert r.exit_code == 0, r.output
    calls: list[tuple] = []

    class FakeApi:
        def create_repo(self, repo_id, repo_type, private, exist_ok):
            calls.append(("create_repo", repo_id, private, exist_ok))
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, repo_id, repo_type, folder_path, commit_message, ignore_patterns=()):
            files = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*")
                           if p.is_file() and not any(fnmatch.fnmatch(p.name, i) for i in ignore_patterns))
            calls.append(("upload_folder", repo_id, repo_type, files))
            return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc", commit_message="",
                                              commit_description="", oid="abc", pr_url=None)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "pre-export"
    r = runner.invoke(app, ["export", str(pre), "-o", str(out), "--push-to-hub", "me/kebr-pre", "--private"])
    assert r.exit_code == 0, r.output
    assert "pretraining checkpoint" in r.output and "https://huggingface.co/me/kebr-pre/commit/abc" in r.output
    assert calls[0] == ("create_repo", "me/kebr-pre", True, True)
    assert calls[1][:3] == ("upload_folder", "me/kebr-pre", "model")
    assert {"README.md", "config.json", "model.safetensors", "text-encoder/model.safetensors"} <= set(calls[1][3])
    assert RECORD not in calls[1][3] and (out / RECORD).is_file()  # this machine's record stays here
    assert "pretraining checkpoint" in (out / "README.md").read_text()

    class OfflineApi(FakeApi):
        def create_repo(self, *args, **kwargs):
            raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")

    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    r = runner.invoke(app, ["export", str(pre), "-o", str(out), "--force", "--push-to-hub", "me/kebr-pre"])
    assert r.exit_code == 1 and "offline mode is enabled" in r.stderr and "the exported folder is complete" in r.stderr
    assert (out / runs.WEIGHTS).is_file()
    r = runner.invoke(app, ["export", str(pre), "-o", str(tmp_path / "y"), "--push-to-hub", "not a repo"])
    assert r.exit_code == 1 and "is not a Hub repository id" in r.stderr and not (tmp_path / "y").exists()


def test_from_pretrained_takes_a_hub_repository_id(local_run: dict, monkeypatch):
    """A repository id is downloaded with huggingface_hub.snapshot_download (mocked: it returns a local copy)."""
    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id: asked.append(repo_id) or str(local_run["run"] / runs.BEST_MODEL))
    model = KEBRModel.from_pretrained("me/kebr-tiny")
    assert asked == ["me/kebr-tiny"] and model.checkpoint_config["stage"] == "finetune"


def test_kebr_export_names_the_run_to_give_for_folders_of_runs(tmp_path: Path):
    """A folder of pretraining-seed runs, an ablation, a search: one sentence naming what to export instead."""
    seeds, ablation, search = tmp_path / "pre3", tmp_path / "ab", tmp_path / "tune"
    for folder in (seeds / "pseed-0", seeds / "pseed-1", ablation, search / runs.BEST_EVAL):
        folder.mkdir(parents=True)
    (ablation / runs.ABLATION_JSON).write_text("{}")
    wanted = {seeds: f"export one of them, e.g. kebr export {seeds / 'pseed-0'} -o DIR",
              ablation: f"export one configuration's run, e.g. kebr export {ablation / 'runs'}/C1 -o DIR",
              search: f"kebr export {search / runs.BEST_EVAL} -o DIR", tmp_path / "none": "does not exist"}
    for run, fragment in wanted.items():
        r = runner.invoke(app, ["export", str(run), "-o", str(tmp_path / "out")])
        assert r.exit_code == 1 and fragment in " ".join(r.stderr.split()), r.output
        assert r.stderr.count("error:") == 1 and not (tmp_path / "out").exists()


def test_fine_tuning_from_a_copied_final_needs_no_text_model_folder(tmp_path: Path):
    """`kebr eval --pretrained copy/` where copy/ is a pretraining's final/ copied alone and the local text
    model it was pretrained with is gone: the encoder and tokenizer come from copy/text-encoder/."""
    store = write_tiny_store(tmp_path / "tiny.h5", n=30)
    text_model = save_local_text_model(tmp_path / "text-model")
    pre = tmp_path / "pre"
    r = runner.invoke(app, ["pretrain", "-d", str(store), "-o", str(pre), "--epochs", "1", "--text-model", str(text_model),
                            "--batch-size", "8", "--layers", "1"])
    assert r.exit_code == 0, r.output
    copy = tmp_path / "copy"
    shutil.copytree(pre / runs.FINAL, copy)
    shutil.rmtree(pre)
    shutil.rmtree(text_model)
    assert "pretrained on the splits train, valid, unlabeled (24 samples)" in (copy / runs.MODEL_CARD).read_text()
    run = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "-d", str(store), "--pretrained", str(copy), "-o", str(run), "--epochs", "1",
                            "--seeds", "1", "--batch-size", "8", "--freeze-encoder"])
    assert r.exit_code == 0, r.output
    assert (run / runs.BEST_MODEL / runs.TEXT_ENCODER / runs.WEIGHTS).is_file()  # stored again: still self-contained


def test_a_model_folder_saved_again_replaces_its_text_encoder_and_keeps_a_foreign_file(tmp_path: Path):
    """best-model/ is saved again at every better epoch: the previous folder (with text-encoder/ and the card)
    must go entirely, or the next save finds a leftover `.old` it does not recognise and refuses. A file
    someone put into text-encoder/ is not removed: it stays in best-model.old, and the next save says so."""
    from kebr_core.model import save_pretrained

    text_model = save_local_text_model(tmp_path / "text-model")
    cfg = RunConfig()
    cfg.model.text_model = str(text_model)
    cfg.model.d_audio, cfg.model.d_vision, cfg.model.layers = 3, 4, 1
    model = KEBRModel(cfg.model, cfg.mcc)
    folder = tmp_path / "run" / runs.BEST_MODEL
    for _ in range(3):
        save_pretrained(model, folder, cfg, include_encoder=False)
        assert sorted(p.name for p in folder.parent.iterdir()) == [runs.BEST_MODEL]  # no .old, no .tmp left
    assert (folder / runs.TEXT_ENCODER / "config.json").is_file() and (folder / runs.MODEL_CARD).is_file()
    (folder / runs.TEXT_ENCODER / "notes.txt").write_text("mine")
    save_pretrained(model, folder, cfg, include_encoder=False)
    assert (folder.with_name(runs.BEST_MODEL + ".old") / runs.TEXT_ENCODER / "notes.txt").read_text() == "mine"
    with pytest.raises(KebrError, match="notes.txt|text-encoder"):
        save_pretrained(model, folder, cfg, include_encoder=False)

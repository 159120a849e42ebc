"""`--report-to tensorboard` and the logger interface (kebr_core.metric_logger): real tiny CLI runs whose
TensorBoard events, read back with tensorboard's EventAccumulator, equal metrics.csv; resume; the
hparams; `kebr analyze`'s figures; a missing tensorboard."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core.metric_logger import CompositeLogger, CSVLogger, TensorBoardLogger, epoch_logger
from tests.conftest import TINY_BERT, write_tiny_store

pytest.importorskip("tensorboard", reason="the tensorboard extra (pip install kebr[tensorboard]) is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "16"]


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = events(folder)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def csv_scalars(path: Path, prefix: str) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as TensorBoard should hold it: a tag per column but epoch, step = epoch."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {prefix + name: [(int(r["epoch"]), float(r[name])) for r in rows] for name in rows[0] if name != "epoch"}


def assert_same(tb: dict, expected: dict) -> None:
    assert set(tb) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in tb[tag]] == [s for s, _ in points], tag
        assert [v for _, v in tb[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-7), tag  # float32


def hparams(folder: Path) -> dict:
    """The hparams session's values ({dotted key: value}) of a TensorBoard folder."""
    content = events(folder).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    out = {}
    for key, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind)
    return out


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> Path:
    """A pretraining (2 epochs) and its evaluation (2 seeds × 2 epochs), both with --report-to tensorboard."""
    root = tmp_path_factory.mktemp("reported")
    store = write_tiny_store(root / "tiny.h5")
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(root / "pre"), "--epochs", "2", "--report-to", "tensorboard",
                            *FAST])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "--dataset", str(store), "--pretrained", str(root / "pre"), "-o", str(root / "ev"),
                            "--epochs", "2", "--seeds", "3,5", "--report-to", "tensorboard", *FAST])
    assert r.exit_code == 0, r.output
    return root


def test_pretraining_scalars_equal_metrics_csv_and_hparams_hold_the_config(reported: Path) -> None:
    pre = reported / "pre"
    tb = scalars(pre / "tensorboard")
    curves = {tag: v for tag, v in tb.items() if not tag.startswith("final/")}
    assert_same(curves, csv_scalars(pre / "metrics.csv", "pretrain/seed-0/"))
    last = {name: points[-1] for name, points in csv_scalars(pre / "metrics.csv", "").items()}
    assert {tag: v for tag, v in tb.items() if tag.startswith("final/")} == {
        f"final/{name}": [pytest.approx(point, rel=1e-6)] for name, point in last.items()}
    config = json.loads((pre / "config.json").read_text())
    values = hparams(pre / "tensorboard")
    assert values["mcc.g"] == pytest.approx(config["mcc"]["g"]) and values["train.epochs"] == 2
    assert values["model.text_model"] == TINY_BERT and values["train.report_to"] == '["tensorboard"]'


def test_each_fine_tuning_seed_has_its_csv_as_scalars_and_the_run_its_test_metrics(reported: Path) -> None:
    ev = reported / "ev"
    for seed in (3, 5):
        assert_same(scalars(ev / f"seed-{seed}" / "tensorboard"),
                    csv_scalars(ev / f"seed-{seed}" / "metrics.csv", f"finetune/seed-{seed}/"))
    results = json.loads((ev / "results.json").read_text())
    final = scalars(ev / "tensorboard")
    for name, mean in results["mean"].items():
        assert final[f"final/test_{name}"] == [(0, pytest.approx(mean, rel=1e-6, abs=1e-7))]
        assert final[f"final/test_{name}_std"] == [(0, pytest.approx(results["std"][name], rel=1e-6, abs=1e-7))]
    assert hparams(ev / "tensorboard")["train.seeds"] == "[3, 5]"


def test_report_to_is_not_the_runs_identity(reported: Path, tmp_path: Path) -> None:
    # The same pretraining run resumed without --report-to continues (the option is operational) …
    r = runner.invoke(app, ["pretrain", str(reported / "tiny.h5"), "-o", str(reported / "pre"), "--epochs", "3", "--resume",
                            *FAST])
    assert r.exit_code == 0, r.output
    assert len((reported / "pre" / "metrics.csv").read_text().splitlines()) == 1 + 3
    # … and the identity check itself skips it.
    from kebr_core.run_identity import identity_differences

    old = json.loads((reported / "pre" / "config.json").read_text())
    assert identity_differences(old, old | {"train": old["train"] | {"report_to": []}}) == []


def test_analyze_adds_its_figures_to_tensorboard(reported: Path) -> None:
    ev = reported / "ev"
    r = runner.invoke(app, ["analyze", str(ev), "--report-to", "tensorboard"])
    assert r.exit_code == 0, r.output
    written = {p.stem for p in (ev / "plots").glob("*.png")}
    assert written and set(events(ev / "plots" / "tensorboard").Tags()["images"]) == {f"analyze/{n}" for n in written}
    # A rerun replaces the images (the restart marker at step 0), one per figure.
    assert runner.invoke(app, ["analyze", str(ev), "--report-to", "tensorboard"]).exit_code == 0
    acc = events(ev / "plots" / "tensorboard")
    assert all(len(acc.Images(tag)) == 1 for tag in acc.Tags()["images"])


def test_a_resumed_log_drops_the_epochs_run_again_in_both_csv_and_tensorboard(tmp_path: Path) -> None:
    config = {"train": {"report_to": ["tensorboard"]}}
    path = tmp_path / "metrics.csv"
    log = epoch_logger(path, config, "pretrain", 0)
    for epoch in (1, 2, 3):
        log.log_dict({"epoch": epoch, "loss": float(epoch)}, epoch)
    log.close()
    # a resume from the checkpoint of epoch 1: epochs 2 and 3 are run again, with other values
    log = epoch_logger(path, config, "pretrain", 0, first_epoch=2)
    for epoch in (2, 3):
        log.log_dict({"epoch": epoch, "loss": 10.0 * epoch}, epoch)
    log.close()
    assert path.read_text().splitlines() == ["epoch,loss", "1,1.0", "2,20.0", "3,30.0"]
    assert scalars(tmp_path / "tensorboard") == {"pretrain/seed-0/loss": [(1, 1.0), (2, 20.0), (3, 30.0)]}


def test_the_csv_logger_gathers_single_scalars_into_the_rows_log_dict_writes(tmp_path: Path) -> None:
    by_row, by_scalar = CSVLogger(tmp_path / "a.csv"), CSVLogger(tmp_path / "b.csv")
    for epoch in (1, 2):
        by_row.log_dict({"loss": epoch / 4, "mae": epoch / 8}, epoch)
        by_scalar.log("loss", epoch / 4, epoch)
        by_scalar.log("mae", epoch / 8, epoch)
    by_row.close()
    by_scalar.close()
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text() == "epoch,loss,mae\n1,0.25,0.125\n2,0.5,0.25\n"


def test_the_composite_sends_every_call_to_each_logger(tmp_path: Path) -> None:
    log = CompositeLogger([CSVLogger(tmp_path / "m.csv"), TensorBoardLogger(tmp_path / "tb", prefix="x/")])
    log.log("a", 0.5, 1)
    log.log_dict({"a": 0.75}, 2)
    log.close()
    assert (tmp_path / "m.csv").read_text() == "epoch,a\n1,0.5\n2,0.75\n"
    assert scalars(tmp_path / "tb") == {"x/a": [(1, 0.5), (2, 0.75)]}


@pytest.mark.parametrize("command", ["pretrain", "eval", "ablate", "tune"])
def test_a_missing_tensorboard_is_one_sentence_before_anything_runs(command: str, tmp_path: Path, monkeypatch) -> None:
    store = write_tiny_store(tmp_path / "tiny.h5")
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError now
    out = tmp_path / "out"
    args = {"pretrain": ["pretrain", str(store)], "eval": ["eval", "--dataset", str(store)],
            "ablate": ["ablate", "--dataset", str(store)], "tune": ["tune", "--dataset", str(store)]}[command]
    r = runner.invoke(app, [*args, "-o", str(out), "--epochs", "1", "--report-to", "tensorboard", *FAST])
    assert r.exit_code != 0
    assert "pip install kebr[tensorboard]" in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_an_unknown_reporter_is_refused_naming_the_option(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "tiny.h5")
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(tmp_path / "out"), "--report-to", "wandb", *FAST])
    assert r.exit_code != 0 and "--report-to must name only tensorboard" in r.output
    assert not (tmp_path / "out").exists()


def test_report_to_comes_from_set_and_config_files_too(tmp_path: Path) -> None:
    from kebr_core.config import resolve_config
    from kebr_core.errors import KebrError

    assert resolve_config("pretrain", sets=["train.report_to=tensorboard"]).train.report_to == ["tensorboard"]
    toml = tmp_path / "c.toml"
    toml.write_text('[train]\nreport_to = ["tensorboard"]\n')
    assert resolve_config("finetune", file=toml).train.report_to == ["tensorboard"]
    with pytest.raises(KebrError, match="train.report_to must name only tensorboard"):
        resolve_config("pretrain", sets=["train.report_to=wandb"])

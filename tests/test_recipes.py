"""Pretraining and fine-tuning recipes: outputs, bit-for-bit resume, errors on bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
import pytest
from safetensors.torch import load_file

from kebr_core import checkpoints
from kebr_core.config import RunConfig
from kebr_core.data.store import FeatureStore
from kebr_core.errors import KebrError
from kebr_core.lexicon import load_lexicon
from kebr_core.masking import mask_batch
from kebr_core.metrics import METRIC_NAMES
from kebr_core.text_encoder import load_tokenizer
from kebr_core.recipes.finetune import finetune
from kebr_core.recipes.pretrain import pretrain
from tests.conftest import MOSI_SAMPLE, TINY_BERT, write_tiny_store


def small_cfg(epochs: int = 3, unfreeze: bool = False) -> RunConfig:
    cfg = RunConfig()
    cfg.model.text_model = TINY_BERT
    cfg.model.head_hidden = 16
    cfg.train.epochs, cfg.train.batch_size, cfg.train.checkpoint_every = epochs, 8, 2
    cfg.train.unfreeze = unfreeze
    return cfg


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def test_pretrain_writes_run_directory(tiny_store: Path, tmp_path: Path) -> None:
    result = pretrain(tiny_store, tmp_path / "pre", small_cfg(epochs=4))
    run = tmp_path / "pre"
    assert json.loads((run / "config.json").read_text())["model"]["d_audio"] == 7
    log = rows(run / "metrics.csv")
    assert [int(r["epoch"]) for r in log] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r["loss"])) and -1 <= float(r["cos_a"]) <= 1 for r in log)
    # Frozen encoder: the checkpoint holds TCMF and heads, not the encoder.
    weights = load_file(str(result.checkpoint / "model.safetensors"))
    assert weights and not any(k.startswith("encoder.") for k in weights)
    assert (run / "checkpoints" / "epoch-0002" / "model.safetensors").exists()
    assert (run / "checkpoints" / "epoch-0004" / "model.safetensors").exists()


def test_pretrain_frozen_encoder_learns_the_task(tiny_store: Path, tmp_path: Path) -> None:
    """Learning means beating the best constant: the median of the masked words' scores, whose L1 is
    mean |y − median(y)| (1.41 here; the run ends near 0.86)."""
    cfg = small_cfg(epochs=12)
    cfg.mcc.weight, cfg.train.lr = 0.0, 1e-3
    pretrain(tiny_store, tmp_path / "pre", cfg)
    log = rows(tmp_path / "pre" / "metrics.csv")
    masked = mask_batch(FeatureStore(tiny_store).texts, load_tokenizer(TINY_BERT), load_lexicon(), cfg.model.max_text_len,
                        seed=cfg.train.seed)
    scores = np.array([m.label for m in masked])
    constant_l1 = np.abs(scores - np.median(scores)).mean()
    assert float(log[-1]["task_l1"]) < 0.8 * constant_l1


@pytest.mark.parametrize("unfreeze", [False, True])
def test_pretrain_resume_is_bit_for_bit(tiny_store: Path, tmp_path: Path, unfreeze: bool) -> None:
    pretrain(tiny_store, tmp_path / "full", small_cfg(epochs=4, unfreeze=unfreeze))
    pretrain(tiny_store, tmp_path / "split", small_cfg(epochs=2, unfreeze=unfreeze))
    pretrain(tiny_store, tmp_path / "split", small_cfg(epochs=4, unfreeze=unfreeze), resume=True)
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k
    assert rows(tmp_path / "full" / "metrics.csv") == rows(tmp_path / "split" / "metrics.csv")


@pytest.mark.parametrize("where", ["between epochs", "first step after an epoch"])
def test_ctrl_c_then_resume_is_bit_for_bit(tiny_store: Path, tmp_path: Path, monkeypatch, where: str) -> None:
    """Ctrl-C after epoch 3 (checkpoint_every = 2, so epoch 3 is not on disk yet): while epoch 3's progress
    is drawn, or inside epoch 4's first step after its optimizer step. Either way the checkpoint saved is
    epoch 3's end, and --resume gives the uninterrupted run bit for bit."""
    import kebr_core.training as training

    pretrain(tiny_store, tmp_path / "full", small_cfg(epochs=5))
    armed = {"on": False}
    balance_sums = training.balance_sums

    def interrupt_in_step(*args):  # called after opt.step(): the weights already moved
        if armed["on"]:
            raise KeyboardInterrupt
        return balance_sums(*args)

    monkeypatch.setattr(training, "balance_sums", interrupt_in_step)

    def ctrl_c_after_epoch_3(stage: str, done: int, total: int, row: dict) -> None:
        if stage == "pretrain" and done == 3:
            if where == "between epochs":
                raise KeyboardInterrupt
            armed["on"] = True

    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_store, tmp_path / "split", small_cfg(epochs=5), progress=ctrl_c_after_epoch_3)
    monkeypatch.setattr(training, "balance_sums", balance_sums)
    assert checkpoints.load_trainer_state(checkpoints.latest_checkpoint(tmp_path / "split"))["epoch"] == 3
    pretrain(tiny_store, tmp_path / "split", small_cfg(epochs=5), resume=True)
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k
    assert rows(tmp_path / "full" / "metrics.csv") == rows(tmp_path / "split" / "metrics.csv")


def test_pretrain_refuses_to_overwrite_a_finished_run(tiny_store: Path, tmp_path: Path) -> None:
    pretrain(tiny_store, tmp_path / "pre", small_cfg(epochs=1))
    with pytest.raises(KebrError, match="--resume"):
        pretrain(tiny_store, tmp_path / "pre", small_cfg(epochs=1))


def test_nan_loss_names_epoch_and_batch(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "nan.h5", audio_value=float("nan"))
    with pytest.raises(KebrError, match=r"epoch 1, batch 0"):
        pretrain(store, tmp_path / "pre", small_cfg(epochs=1))


def test_finetune_from_checkpoint_writes_results(tiny_store: Path, tmp_path: Path) -> None:
    pre = pretrain(tiny_store, tmp_path / "pre", small_cfg(epochs=2))
    result = finetune(tiny_store, tmp_path / "ft", small_cfg(epochs=3, unfreeze=True), checkpoint=pre.run_dir, seeds=[0, 1])
    payload = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert set(payload["mean"]) == set(METRIC_NAMES) and len(payload["per_seed"]) == 2
    assert all(1 <= e <= 3 for e in payload["best_epochs"])
    # The chosen epoch is the one with the lowest validation MAE.
    for seed, best in zip([0, 1], payload["best_epochs"]):
        log = rows(tmp_path / "ft" / f"seed-{seed}" / "metrics.csv")
        maes = [float(r["valid_mae"]) for r in log]
        assert best == 1 + int(np.argmin(maes))
        preds = list(csv.DictReader((tmp_path / "ft" / f"seed-{seed}" / "predictions.csv").open()))
        assert len(preds) == 12  # 60 samples, every fifth is test
    feats = np.load(tmp_path / "ft" / "seed-0" / "test_features.npz")
    assert feats["features"].shape == (12, 32)
    assert result.summary["mae"][0] == pytest.approx(np.mean([r["mae"] for r in result.per_seed]))
    # best-model/ is the seed with the lowest validation MAE, with the encoder (it was fine-tuned)
    # and the store's feature description for `kebr predict`.
    selection = json.loads((tmp_path / "ft" / "best-model" / "selection.json").read_text())
    valid = {s: json.loads((tmp_path / "ft" / f"seed-{s}" / "test.json").read_text())["valid_mae"] for s in (0, 1)}
    assert selection["seed"] == min(valid, key=valid.get)
    saved = json.loads((tmp_path / "ft" / "best-model" / "config.json").read_text())
    assert saved["features"]["audio_features"] == [f"a{i}" for i in range(7)] and saved["includes_encoder"]
    assert any(k.startswith("encoder.") for k in load_file(str(tmp_path / "ft" / "best-model" / "model.safetensors")))


def test_finetune_skips_finished_seeds(tiny_store: Path, tmp_path: Path) -> None:
    """A rerun of the same run (here: seed 1 had not finished) reuses the seeds that finished."""
    finetune(tiny_store, tmp_path / "ft", small_cfg(epochs=1), seeds=[0, 1])
    marker = tmp_path / "ft" / "seed-0" / "test.json"
    stamp = marker.stat().st_mtime_ns
    (tmp_path / "ft" / "seed-1" / "test.json").unlink()
    finetune(tiny_store, tmp_path / "ft", small_cfg(epochs=1), seeds=[0, 1])
    assert marker.stat().st_mtime_ns == stamp
    assert (tmp_path / "ft" / "seed-1" / "test.json").exists()


def test_finetune_needs_labels(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "unlabeled.h5", labeled=False)
    with pytest.raises(KebrError, match="no labeled 'train' samples"):
        finetune(store, tmp_path / "ft", small_cfg(epochs=1), seeds=[0])


def test_finetune_rejects_checkpoint_with_other_feature_dims(tiny_store: Path, tmp_path: Path) -> None:
    other = write_tiny_store(tmp_path / "other.h5", d_audio=9)
    pre = pretrain(other, tmp_path / "pre", small_cfg(epochs=1))
    with pytest.raises(KebrError, match="9/5 dims"):
        finetune(tiny_store, tmp_path / "ft", small_cfg(epochs=1), checkpoint=pre.checkpoint, seeds=[0])


def test_text_only_store_from_label_csv_trains(tmp_path: Path) -> None:
    """A store imported from MMSA's label.csv names no audio/vision features: it still fine-tunes
    (CMA terms and MCC drop out) and MCC reports no valid sample."""
    import csv as _csv

    from kebr_core.data.importers import import_label_csv

    src = MOSI_SAMPLE
    rows_in = list(_csv.DictReader(src.open()))
    small = tmp_path / "label.csv"
    with small.open("w", newline="") as f:
        w = _csv.DictWriter(f, fieldnames=list(rows_in[0]))
        w.writeheader()
        for mode in ("train", "valid", "test"):
            w.writerows([r for r in rows_in if r["mode"] == mode][:16])
    store = tmp_path / "text.h5"
    import_label_csv(small, store)
    result = finetune(store, tmp_path / "ft", small_cfg(epochs=1), seeds=[0])
    log = rows(tmp_path / "ft" / "seed-0" / "metrics.csv")
    assert float(log[0]["train_mcc"]) == 0.0 and np.isfinite(result.summary["mae"][0])


def test_random_word_per_epoch_reencodes_only_the_random_words(tmp_path: Path) -> None:
    """train.random_word = per-epoch: each epoch masks the random-word texts anew (seeded by the epoch)
    and the frozen encoder's cache is re-encoded for those texts only; its rows then equal a cache
    built from scratch on that epoch's texts; the run is not the fixed-draw run."""
    from kebr_core.data.store import Sample, StoreWriter
    from kebr_core.text_encoder import load_text_encoder
    from kebr_core.training import build_text_cache

    texts = ["the table is near seven windows and doors", "it was a great movie", "we walked to the red house later"]
    rng = np.random.default_rng(0)
    with StoreWriter(tmp_path / "s.h5", ["a0", "a1"], ["v0", "v1"]) as w:
        for i in range(12):
            w.add(Sample(id=f"s{i}", text=texts[i % 3], audio=rng.normal(size=(4, 2)).astype(np.float32),
                         vision=rng.normal(size=(3, 2)).astype(np.float32), label=0.5, split="train"))
    runs_metrics = {}
    for mode in ("fixed", "per-epoch"):
        cfg = small_cfg(epochs=2)
        cfg.train.random_word = mode
        pretrain(tmp_path / "s.h5", tmp_path / mode, cfg)
        runs_metrics[mode] = rows(tmp_path / mode / "metrics.csv")
    assert runs_metrics["fixed"] != runs_metrics["per-epoch"]

    # the cache update itself: replace the random-word rows, compare with a fresh cache of epoch 2's texts
    tokenizer, encoder = load_tokenizer(TINY_BERT), load_text_encoder(TINY_BERT)
    texts_store = FeatureStore(tmp_path / "s.h5").texts
    first = mask_batch(texts_store, tokenizer, load_lexicon(), 50, seed=0)
    second = mask_batch(texts_store, tokenizer, load_lexicon(), 50, seed=0, epoch=2)
    random_rows = [i for i, m in enumerate(first) if not m.from_lexicon]
    assert random_rows and len(random_rows) < len(first)
    cache = build_text_cache(encoder, [m.input_ids for m in first], torch.device("cpu"))
    cache.replace(random_rows, build_text_cache(encoder, [second[i].input_ids for i in random_rows], torch.device("cpu")))
    fresh = build_text_cache(encoder, [m.input_ids for m in second], torch.device("cpu"))
    torch.testing.assert_close(cache.flat, fresh.flat, atol=1e-5, rtol=1e-5)

"""The steps of training that decide every reported number, each pinned by a test that fails without it.

Runs are real (`kebr pretrain` / `kebr eval` through Typer's CliRunner, or the recipes) on tiny stores
with the tiny random BERT; what a run did is read back from its config.json, metrics.csv, saved weights
and optimiser state, and compared with a reference computed here from public pieces.

Each test was checked against a deliberate break of the code (docs/testing.md lists the mutations):

    test_finetune_tests_the_best_validation_weights        test the last epoch (no restore of the best weights)
    test_finetune_starts_from_the_pretrained_weights_…    skip the weight load; ignore the checkpoint's geometry
    test_pretraining_backpropagates_task_plus_lambda_mcc   drop MCC from the loss; ignore λ (weight 1)
    test_balance_sums_by_hand                              count invalid samples' f_i; a signed angle gap
    test_text_cache_equals_a_fresh_encoder_forward         shuffle the cache order; pad with stale states
    test_*_options_reach_…, test_paper_preset_…             ignore an option; a wrong group rate; no cosine
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core.config import RunConfig
from kebr_core.data.dataset import Collator, StoreDataset
from kebr_core.data.store import FeatureStore, Sample, StoreWriter
from kebr_core.lexicon import load_lexicon
from kebr_core.masking import mask_batch, tokenize_plain
from kebr_core.metrics import msa_metrics
from kebr_core.model import KEBRModel
from kebr_core.text_encoder import load_text_encoder, load_tokenizer
from kebr_core.modules.mcc import MCCOutput
from kebr_core.recipes.pretrain import pretrain
from kebr_core.recipes.setup import finetune_optimizer, pretrain_optimizer
from kebr_core import checkpoints
from kebr_core.checkpoints import load_checkpoint_weights, read_checkpoint_config
from kebr_core.training import balance_sums, build_text_cache
from tests.conftest import TEXTS, TINY_BERT, write_tiny_store

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8"]


# ───────────────────────── helpers: read a run back, predict with public pieces ─────────────────────────


def invoke(*args: str) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def run_config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def metric_column(path: Path, name: str) -> list[float]:
    with path.open() as f:
        return [float(row[name]) for row in csv.DictReader(f)]


def saved_optimizer_state(run_dir: Path) -> dict:
    """The Adam state_dict a pretraining run saved for --resume (its latest checkpoint)."""
    return checkpoints.load_trainer_state(checkpoints.latest_checkpoint(run_dir))["optimizer"]


def load_model(checkpoint: Path) -> tuple[KEBRModel, RunConfig]:
    """The model a checkpoint folder describes, with its weights, in eval mode."""
    cfg = RunConfig.from_dict(read_checkpoint_config(checkpoint))
    model = KEBRModel(cfg.model, cfg.mcc)
    load_checkpoint_weights(model, checkpoint)
    return model.eval(), cfg


def whole_split(store_path: Path, split: str | None, cfg: RunConfig, masked: bool = False) -> dict[str, torch.Tensor]:
    """One batch of every sample of `split` (store order): plain texts, or masked as pretraining masks them."""
    store = FeatureStore(store_path)
    tokenizer = load_tokenizer(cfg.model.text_model)
    if masked:
        texts = mask_batch(store.texts, tokenizer, load_lexicon(), cfg.model.max_text_len, seed=cfg.train.seed)
        encoded = [{"input_ids": m.input_ids, "mask_pos": m.mask_pos, "mask_label": m.label} for m in texts]
    else:
        encoded = [{"input_ids": ids} for ids in tokenize_plain(store.texts, tokenizer, cfg.model.max_text_len)]
    indices = store.indices(split)
    dataset = StoreDataset(store, split=split, text_encoder=lambda texts: [encoded[i] for i in indices])
    collate = Collator.from_config(cfg.model, tokenizer.pad_token_id)
    return collate([dataset[k] for k in range(len(dataset))])


@torch.no_grad()
def predict(model: KEBRModel, batch: dict[str, torch.Tensor]) -> np.ndarray:
    return model(batch, task="finetune").pred.double().numpy()


def write_contrary_store(path: Path, n: int = 50, d_audio: int = 4, d_vision: int = 3) -> Path:
    """Audio carries +label in train and test but −label in valid: the better a model fits train, the worse
    its validation MAE, so the best validation epoch is an early one, not the last."""
    rng = np.random.default_rng(3)
    splits = ["train", "train", "train", "valid", "test"]
    with StoreWriter(path, [f"a{i}" for i in range(d_audio)], [f"v{i}" for i in range(d_vision)]) as w:
        for i in range(n):
            label, split = float(np.round(rng.uniform(-3, 3), 1)), splits[i % 5]
            sign = -1.0 if split == "valid" else 1.0
            audio = 0.1 * rng.normal(size=(int(rng.integers(2, 8)), d_audio)).astype(np.float32) + sign * label
            vision = rng.normal(size=(int(rng.integers(1, 5)), d_vision)).astype(np.float32)
            w.add(Sample(id=f"s{i:03d}", text=TEXTS[i % len(TEXTS)], audio=audio, vision=vision, label=label, split=split))
    return path


# ───────────────────────── 1. fine-tuning tests the best validation epoch's weights ─────────────────────────


def test_finetune_tests_the_best_validation_weights(tmp_path: Path) -> None:
    store = write_contrary_store(tmp_path / "contrary.h5")
    ev = tmp_path / "ev"
    epochs = 4
    invoke("eval", "--dataset", store, "-o", ev, "--epochs", epochs, "--seeds", "1", "--freeze-encoder",
           "--dropout", "0", "--lr", "3e-3", "--lr-fusion", "3e-3", *FAST)
    chosen = json.loads((ev / "seed-0" / "test.json").read_text())
    valid_mae = metric_column(ev / "seed-0" / "metrics.csv", "valid_mae")
    best = chosen["best_epoch"]
    # The run must make the choice matter: its best epoch is not its last.
    assert best == 1 + int(np.argmin(valid_mae)) and best < epochs and valid_mae[best - 1] < valid_mae[-1] - 1e-3

    # best-model/ holds the weights that were tested: they reproduce the best epoch's validation MAE
    # (not the last epoch's), the test predictions written and the test metrics reported.
    model, cfg = load_model(ev / "best-model")
    valid = whole_split(store, "valid", cfg)
    assert msa_metrics(predict(model, valid), valid["label"].double().numpy())["mae"] == pytest.approx(
        valid_mae[best - 1], rel=1e-5)
    test = whole_split(store, "test", cfg)
    pred = predict(model, test)
    written = np.loadtxt(ev / "seed-0" / "predictions.csv", delimiter=",", skiprows=1, usecols=2)
    np.testing.assert_allclose(written, pred, rtol=1e-5, atol=1e-6)
    assert chosen["test"]["mae"] == pytest.approx(msa_metrics(pred, test["label"].double().numpy())["mae"], rel=1e-5)


# ───────────────────────── 2. fine-tuning starts from the pretrained weights and geometry ─────────────────────────


def test_finetune_starts_from_the_pretrained_weights_and_geometry(tiny_store: Path, tmp_path: Path) -> None:
    pre, ev = tmp_path / "pre", tmp_path / "ev"
    # Pretrained with another seed than fine-tuning's and a high rate, so its weights are far from any fresh
    # initialisation; a geometry unlike eval's defaults (typing other values is refused: test_strict_input).
    invoke("pretrain", tiny_store, "-o", pre, "--epochs", "2", "--seed", "7", "--lr", "1e-2", "--layers", "2",
           "--heads", "2", "--ffn", "linear", "--no-shared-layers", *FAST)
    invoke("eval", "--dataset", tiny_store, "--pretrained", pre, "-o", ev, "--epochs", "1", "--seeds", "1", "--freeze-encoder",
           "--max-text-len", "40", "--dropout", "0.2",
           "--lr-fusion", "1e-9", *FAST)
    model = run_config(ev)["model"]
    # The checkpoint's architecture replaces the defaults; the sequence caps and dropout stay the options'.
    assert (model["layers"], model["heads"], model["ffn"], model["shared_layers"]) == (2, 2, "linear", False)
    assert (model["max_text_len"], model["dropout"]) == (40, 0.2)

    pretrained = load_file(str(pre / "final" / "model.safetensors"))
    tuned = load_file(str(ev / "best-model" / "model.safetensors"))
    fusion = sorted(k for k in pretrained if k.startswith("fusion."))
    assert any(k.startswith("fusion.layers.1.") for k in fusion)  # two independent layers
    assert fusion == sorted(k for k in tuned if k.startswith("fusion."))
    for k in fusion:  # one epoch at lr_fusion 1e-9 moves a weight by ~1e-8 at most
        torch.testing.assert_close(tuned[k], pretrained[k], atol=1e-6, rtol=0, msg=k)


# ───────────────────────── 3. the loss is task + λ·MCC ─────────────────────────


def tiny_run_config(**train) -> RunConfig:
    cfg = RunConfig()
    cfg.model.text_model, cfg.model.head_hidden, cfg.model.dropout = TINY_BERT, 16, 0.0
    for name, value in train.items():
        setattr(cfg.train, name, value)
    return cfg


@pytest.mark.parametrize("lambda_mcc", [0.0, 0.5])
def test_pretraining_backpropagates_task_plus_lambda_mcc(tmp_path: Path, lambda_mcc: float) -> None:
    """One epoch of one batch (batch size > samples) at a rate too small to move float32 weights: the
    saved weights are the ones the gradient was taken at, and Adam's first moment after one step is
    (1 − β1)·g. That g must be the gradient of L1(pred, y_mask) + λ·L_mcc (Eq. 16–17) computed here."""
    store = write_tiny_store(tmp_path / "s.h5", n=24)
    cfg = tiny_run_config(epochs=1, batch_size=64, lr=1e-12)
    cfg.mcc.weight, cfg.mcc.g = lambda_mcc, 0.1
    pretrain(store, tmp_path / "pre", cfg)
    trainer = saved_optimizer_state(tmp_path / "pre")
    (group,) = trainer["param_groups"]
    beta1 = group["betas"][0]

    model, saved_cfg = load_model(checkpoints.latest_checkpoint(tmp_path / "pre"))
    assert saved_cfg.mcc.weight == lambda_mcc
    model.train()
    model.encoder.eval()  # frozen: no dropout, as the recipe runs it
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for p in pretrain_optimizer(model, saved_cfg).param_groups[0]["params"]]
    seen = {order[i]: trainer["state"][i]["exp_avg"] / (1 - beta1) for i in group["params"]}

    batch = whole_split(store, None, saved_cfg, masked=True)
    out = model(batch, task="pretrain")
    task = (out.pred - batch["mask_label"]).abs().mean()
    trained = [(n, p) for n, p in model.named_parameters() if n in seen]
    params = [p for _, p in trained]
    g_task = torch.autograd.grad(task, params, retain_graph=True)
    g_mcc = torch.autograd.grad(out.mcc.loss, params, allow_unused=True, materialize_grads=True)  # not the head
    scale = max(g.abs().max().item() for g in g_task)
    # The MCC gradient is 100× the tolerance below: dropping it, or weighting it by anything but λ, shows.
    assert max(g.abs().max().item() for g in g_mcc) > 0.01 * scale
    for (name, _), gt, gm in zip(trained, g_task, g_mcc):
        torch.testing.assert_close(seen[name], gt + lambda_mcc * gm, atol=1e-4 * scale, rtol=1e-3, msg=name)


def test_balance_sums_by_hand() -> None:
    """Σ|err|, B, then over the valid samples only: Σf_i, Σc_a, Σc_v, Σ|θ_a − θ_v|, their count."""
    c_a = torch.tensor([0.5, -1.0, 0.2, 1.0])
    c_v = torch.tensor([1.0, 0.0, 0.9, 0.0])
    mcc = MCCOutput(loss=torch.tensor(0.0), per_sample=torch.tensor([0.3, 0.7, 5.0, 0.0]), c_a=c_a, c_v=c_v,
                    valid=torch.tensor([True, True, False, True]))
    sums = balance_sums(torch.tensor([0.5, 1.5, 2.0, 0.25]), mcc)
    # θ: arccos 0.5 = π/3, arccos 1 = 0, arccos(−1) = π, arccos 0 = π/2; the last gap is θ_a < θ_v
    dtheta = abs(math.pi / 3 - 0) + abs(math.pi - math.pi / 2) + abs(0 - math.pi / 2)
    expected = [4.25, 4.0, 0.3 + 0.7 + 0.0, 0.5 - 1.0 + 1.0, 1.0 + 0.0 + 0.0, dtheta, 3.0]
    torch.testing.assert_close(sums, torch.tensor(expected), atol=1e-6, rtol=0)


# ───────────────────────── 4. the frozen encoder's text cache equals the encoder ─────────────────────────


def test_text_cache_equals_a_fresh_encoder_forward() -> None:
    """Many cache batches of mixed lengths (the cache sorts by length, so store order ≠ batch order):
    every gathered row equals the encoder run on that text alone, and padding is zero."""
    encoder = load_text_encoder(TINY_BERT).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 20, size=23)
    token_ids = [[101, *rng.integers(1000, 5000, size=n - 2).tolist(), 102] for n in lengths]
    cache = build_text_cache(encoder, token_ids, torch.device("cpu"), batch_size=4)
    index = torch.as_tensor(rng.permutation(len(token_ids))[:9])
    width = int(lengths[index.numpy()].max()) + 3
    gathered = cache.gather(index, width)
    assert gathered.shape == (9, width, 32)
    with torch.no_grad():
        for row, i in enumerate(index.tolist()):
            alone = encoder(input_ids=torch.tensor([token_ids[i]])).last_hidden_state[0]
            torch.testing.assert_close(gathered[row, : lengths[i]], alone, atol=2e-5, rtol=1e-4)
            assert not gathered[row, lengths[i]:].any()


# ───────────────────────── 5. options reach the configuration and the optimiser ─────────────────────────


def group_names(opt: torch.optim.Optimizer, model: KEBRModel) -> list[tuple[float, set[str]]]:
    """(lr, names of the parameters) of each parameter group."""
    names = {id(p): n.split(".")[0] for n, p in model.named_parameters()}
    return [(g["lr"], {names[id(p)] for p in g["params"]}) for g in opt.param_groups]


def test_pretrain_options_reach_the_config_and_the_optimiser(tiny_store: Path, tmp_path: Path) -> None:
    pre = tmp_path / "pre"
    invoke("pretrain", tiny_store, "-o", pre, "--epochs", "1", "--lambda-mcc", "0.3", "--mcc-align", "projected",
           "--s", "1.7", "--g", "0.1", "--mcc-form", "reference", "--layers", "2", "--heads", "4", "--ffn", "linear",
           "--lr", "3e-3", "--lr-encoder", "2e-5", "--unfreeze", *FAST)
    saved = run_config(pre)
    assert {k: saved["mcc"][k] for k in ("weight", "align", "s", "g", "form")} == {
        "weight": 0.3, "align": "projected", "s": 1.7, "g": 0.1, "form": "reference"}
    assert (saved["model"]["layers"], saved["model"]["heads"], saved["model"]["ffn"]) == (2, 4, "linear")
    assert (saved["train"]["lr"], saved["train"]["lr_encoder"], saved["train"]["unfreeze"]) == (3e-3, 2e-5, True)

    cfg = RunConfig.from_dict(saved)
    model = KEBRModel(cfg.model, cfg.mcc)
    assert model.fusion.num_layers == 2 and model.fusion.layers[0].cma_audio.heads == 4
    assert group_names(pretrain_optimizer(model, cfg), model) == [
        (3e-3, {"fusion", "pretrain_head"}), (2e-5, {"encoder"})]
    # …and the run itself trained with those rates.
    assert [g["lr"] for g in saved_optimizer_state(pre)["param_groups"]] == [3e-3, 2e-5]


def test_pretrain_keeps_a_frozen_encoder_out_of_the_optimiser() -> None:
    cfg = tiny_run_config()
    model = KEBRModel(cfg.model, cfg.mcc)
    assert group_names(pretrain_optimizer(model, cfg), model) == [(1e-4, {"fusion", "pretrain_head"})]


def test_eval_options_reach_the_config_and_the_optimiser(tiny_store: Path, tmp_path: Path) -> None:
    ev = tmp_path / "ev"
    invoke("eval", "--dataset", tiny_store, "-o", ev, "--epochs", "1", "--seeds", "1", "--lambda-mcc", "0.25",
           "--mcc-align", "projected", "--s", "2", "--layers", "3", "--heads", "2", "--ffn", "linear",
           "--lr", "2e-3", "--lr-encoder", "1e-5", "--lr-fusion", "4e-4", *FAST)
    saved = run_config(ev)
    assert {k: saved["mcc"][k] for k in ("weight", "align", "s")} == {"weight": 0.25, "align": "projected", "s": 2.0}
    assert (saved["model"]["layers"], saved["model"]["heads"], saved["model"]["ffn"]) == (3, 2, "linear")
    assert {k: saved["train"][k] for k in ("lr", "lr_encoder", "lr_fusion", "unfreeze")} == {
        "lr": 2e-3, "lr_encoder": 1e-5, "lr_fusion": 4e-4, "unfreeze": True}

    cfg = RunConfig.from_dict(saved)
    model = KEBRModel(cfg.model, cfg.mcc)
    opt, schedule = finetune_optimizer(model, cfg)
    assert group_names(opt, model) == [(4e-4, {"fusion"}), (2e-3, {"finetune_head"}), (1e-5, {"encoder"})]
    # Cosine annealing (T_max = cosine_tmax, one step per epoch): lr_t = lr_0 · (1 + cos(π t / T)) / 2.
    T = cfg.train.cosine_tmax
    assert T == 20
    for t in range(1, T + 1):
        opt.step()
        schedule.step()
        factor = (1 + math.cos(math.pi * t / T)) / 2
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([4e-4 * factor, 2e-3 * factor, 1e-5 * factor],
                                                                    rel=1e-9, abs=1e-15)


def test_eval_defaults_are_the_authors_rates(tiny_store: Path, tmp_path: Path) -> None:
    """Without --lr-fusion, TCMF fine-tunes at 5e-6 (the authors'), the head at 1e-4; --freeze-encoder keeps
    the encoder out of the optimiser."""
    ev = tmp_path / "ev"
    invoke("eval", "--dataset", tiny_store, "-o", ev, "--epochs", "1", "--seeds", "1", "--freeze-encoder", *FAST)
    cfg = RunConfig.from_dict(run_config(ev))
    assert (cfg.train.lr, cfg.train.lr_fusion, cfg.train.lr_encoder, cfg.train.unfreeze) == (1e-4, 5e-6, 5e-6, False)
    model = KEBRModel(cfg.model, cfg.mcc)
    assert group_names(finetune_optimizer(model, cfg)[0], model) == [(5e-6, {"fusion"}), (1e-4, {"finetune_head"})]


@pytest.mark.parametrize("stage, epochs, lr_fusion", [("pretrain", 200, None), ("eval", 200, None)])
def test_paper_preset_sets_the_papers_settings_and_options_win(tmp_path: Path, stage: str, epochs: int,
                                                                lr_fusion: float | None) -> None:
    """--preset paper: 200 epochs in both stages (§4.2; the defaults are 20 / 10), batch 32, Adam at 5e-6
    for the encoder and 1e-4 for every other parameter (lr_fusion unset = the head's 1e-4, also when
    fine-tuning, where kebr's default is the authors' 5e-6); an explicit option still wins."""
    store = write_tiny_store(tmp_path / "s.h5", n=10, seed=1)
    target = ["pretrain", store] if stage == "pretrain" else ["eval", "--dataset", store, "--seeds", "1", "--freeze-encoder"]
    quick = ["--checkpoint-every", "1000"] if stage == "pretrain" else []
    invoke(*target, "-o", tmp_path / "paper", "--preset", "paper", *quick, "--text-model", TINY_BERT)
    train = run_config(tmp_path / "paper")["train"]
    assert {k: train[k] for k in ("epochs", "batch_size", "lr", "lr_encoder", "lr_fusion")} == {
        "epochs": epochs, "batch_size": 32, "lr": 1e-4, "lr_encoder": 5e-6, "lr_fusion": lr_fusion}
    invoke(*target, "-o", tmp_path / "mine", "--preset", "paper", "--epochs", "1", "--text-model", TINY_BERT)
    assert run_config(tmp_path / "mine")["train"]["epochs"] == 1

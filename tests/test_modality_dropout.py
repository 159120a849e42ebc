"""Modality dropout (train.modality_dropout, `kebr eval --modality-dropout`): the chosen training samples lose
one stream, with the asked probability, seeded per (seed, epoch, sample); never at validation or test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core.model import KEBRModel
from kebr_core.training import modality_dropout_mask, remove_modality
from tests.conftest import TINY_BERT

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8", "--freeze-encoder"]


def test_mask_has_the_probability_asked_and_depends_only_on_seed_epoch_and_sample() -> None:
    index = torch.arange(20_000)
    mask = modality_dropout_mask(index, 0.3, seed=0, epoch=1)
    # Binomial(20000, 0.3): sd of the share 0.0032; 4 sd either side.
    assert abs(mask.float().mean().item() - 0.3) < 0.013
    assert not modality_dropout_mask(index[:500], 0.0, seed=0, epoch=1).any()
    # A sample's draw does not depend on its batch: a shuffled, cut batch gets the same per-sample answers.
    perm = torch.randperm(20_000, generator=torch.Generator().manual_seed(1))[:64]
    assert torch.equal(modality_dropout_mask(perm, 0.3, seed=0, epoch=1), mask[perm])
    # Other epochs and seeds draw anew (independently: the two masks agree on ~0.3² + 0.7² = 58 % of samples).
    for other in (modality_dropout_mask(index, 0.3, seed=0, epoch=2), modality_dropout_mask(index, 0.3, seed=1, epoch=1)):
        assert abs((other == mask).float().mean().item() - 0.58) < 0.02


def test_remove_modality_from_chosen_samples_only() -> None:
    batch = {"audio": torch.ones(3, 4, 2), "audio_mask": torch.tensor([[True, True, True, False]] * 3),
             "vision": torch.ones(3, 2, 5), "vision_mask": torch.ones(3, 2, dtype=torch.bool)}
    chosen = torch.tensor([False, True, False])
    out = remove_modality(batch, "audio", "absent", samples=chosen)
    assert (out["audio"][1] == 0).all() and not out["audio_mask"][1].any()
    assert torch.equal(out["audio"][[0, 2]], batch["audio"][[0, 2]])
    assert torch.equal(out["audio_mask"][[0, 2]], batch["audio_mask"][[0, 2]])
    assert out["vision"] is batch["vision"] and (batch["audio"] == 1).all()  # the input batch is unchanged


def test_eval_drops_audio_from_the_drawn_training_samples_and_never_at_evaluation(
        tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through `kebr eval`: every forward pass is recorded. In training, exactly the samples that
    `modality_dropout_mask` draws for (seed, epoch) have no audio frame, vision untouched; in
    validation and test every sample keeps its audio (the tiny store gives each sample ≥ 1 frame)."""
    seen: list[tuple[bool, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    forward = KEBRModel.forward

    def spy(self, batch, *args, **kwargs):
        seen.append((self.training, batch["index"].cpu().clone(), batch["audio_mask"].any(1).cpu().clone(),
                     batch["vision_mask"].any(1).cpu().clone()))
        return forward(self, batch, *args, **kwargs)

    monkeypatch.setattr(KEBRModel, "forward", spy)
    out = tmp_path / "ev"
    epochs = 3
    r = runner.invoke(app, ["eval", "--dataset", str(tiny_store), "-o", str(out), "--epochs", str(epochs), "--seeds", "3",
                            "--modality-dropout", "0.5", *FAST])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["train"]["modality_dropout"] == 0.5

    training = [s for s in seen if s[0]]
    evaluation = [s for s in seen if not s[0]]
    assert evaluation and all(has_audio.all() and has_vision.all() for _, _, has_audio, has_vision in evaluation)
    # Training batches come seed by seed (0, 1, 2), epoch by epoch: 36 train samples, batches of 8 → 5 per epoch.
    per_epoch = 5
    assert len(training) == 3 * epochs * per_epoch
    removed = []
    for n, (_, index, has_audio, has_vision) in enumerate(training):
        seed, epoch = n // (epochs * per_epoch), n % (epochs * per_epoch) // per_epoch + 1
        assert torch.equal(~has_audio, modality_dropout_mask(index, 0.5, seed, epoch)), (seed, epoch)
        assert has_vision.all()
        removed.append(~has_audio)
    share = torch.cat(removed).float().mean().item()
    assert 0.35 < share < 0.65  # 324 draws at p = 0.5: sd 0.028


def test_modality_dropout_out_of_range_is_refused(tiny_store: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["eval", "--dataset", str(tiny_store), "-o", str(tmp_path / "a"), "--modality-dropout", "1", *FAST])
    assert r.exit_code == 2 and "Traceback" not in r.output and "must be a finite number ≥ 0 and < 1" in " ".join(r.output.split())
    r = runner.invoke(app, ["eval", "--dataset", str(tiny_store), "-o", str(tmp_path / "b"), "--dropped-modality", "text", *FAST])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "--dropped-modality must be one of audio, vision, not 'text'." in " ".join(r.output.split())
    assert not (tmp_path / "b" / "config.json").exists()
    r = runner.invoke(app, ["eval", "--dataset", str(tiny_store), "-o", str(tmp_path / "c"), "--set",
                            "train.modality_dropout=-0.1", *FAST])
    assert r.exit_code != 0 and "--set train.modality_dropout must lie in [0, 1) (0 turns it off), not -0.1." in r.output


def test_mask_leaves_the_epochs_other_random_streams_alone() -> None:
    """Turning modality dropout on changes which samples lose audio, not the dropout masks or the
    shuffling the rest of the epoch draws: the mask takes nothing from the global generators."""
    from kebr_core.training import seed_epoch

    seed_epoch(0, 1, 0)
    plain = torch.rand(3), np.random.rand(3)
    seed_epoch(0, 1, 0)
    modality_dropout_mask(torch.arange(100), 0.5, seed=0, epoch=1)
    assert torch.equal(torch.rand(3), plain[0]) and np.array_equal(np.random.rand(3), plain[1])

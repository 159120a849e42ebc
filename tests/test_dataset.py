"""StoreDataset (texts encoded once, frames read lazily) and the Collator that pads batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kebr_core.config import ModelConfig
from kebr_core.data.dataset import Collator, StoreDataset, collate
from kebr_core.data.store import FeatureStore, Sample, StoreWriter


def item(index: int, n_tokens: int, la: int, lv: int, label: float = 0.5, **extra) -> dict:
    """A dataset item whose values encode their position: token t = 100·index + t, frame τ column c = index + τ/100 + c/1000."""
    def frames(n: int, d: int) -> np.ndarray:
        return (index + np.arange(n)[:, None] / 100 + np.arange(d)[None, :] / 1000).astype(np.float32).reshape(n, d)
    return {"index": index, "input_ids": np.arange(n_tokens) + 100 * index, "audio": frames(la, 3),
            "vision": frames(lv, 2), "label": label, **extra}


def test_collate_pads_each_batch_to_its_own_longest_and_masks() -> None:
    batch = [item(1, 3, 0, 2, -1.0), item(2, 5, 4, 0, 2.5), item(3, 2, 2, 1, float("nan"))]
    out = collate(batch, max_text_len=50, max_audio_len=400, max_vision_len=55)
    assert out["input_ids"].shape == (3, 5) and out["input_ids"].dtype == torch.long
    assert out["audio"].shape == (3, 4, 3) and out["audio"].dtype == torch.float32
    assert out["vision"].shape == (3, 2, 2)
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert out["input_ids"][0].tolist() == [100, 101, 102, 0, 0]
    assert out["audio_mask"].tolist() == [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]  # no audio: an all-False row
    assert out["vision_mask"].tolist() == [[1, 1], [0, 0], [1, 0]]
    np.testing.assert_array_equal(out["audio"][1].numpy(), batch[1]["audio"])
    np.testing.assert_array_equal(out["audio"][2, :2].numpy(), batch[2]["audio"])
    assert out["audio"][2, 2:].abs().sum() == 0 and out["audio"][0].abs().sum() == 0
    np.testing.assert_array_equal(out["label"].numpy(), np.array([-1.0, 2.5, np.nan], dtype=np.float32))
    assert out["index"].tolist() == [1, 2, 3] and out["index"].dtype == torch.long
    assert out["attention_mask"].dtype == torch.bool and out["audio_mask"].dtype == torch.bool
    assert "mask_pos" not in out
    # flat positions b·Lt + t of the valid tokens (rows of width 5: 3, 5 and 2 tokens)
    assert out["text_index"].tolist() == [0, 1, 2, 5, 6, 7, 8, 9, 10, 11]
    assert out["text_index"].dtype == torch.long


def test_collate_truncates_to_first_frames_and_keeps_one_frame_when_all_empty() -> None:
    batch = [item(1, 9, 10, 0, mask_pos=2, mask_label=1.25), item(2, 4, 3, 0, mask_pos=3, mask_label=-0.5)]
    out = Collator(max_text_len=6, max_audio_len=5, max_vision_len=55, pad_id=7)(batch)
    assert out["input_ids"].shape == (2, 6)
    assert out["input_ids"][0].tolist() == [100, 101, 102, 103, 104, 105]  # first tokens kept
    assert out["input_ids"][1].tolist() == [200, 201, 202, 203, 7, 7]  # padded with pad_id
    np.testing.assert_array_equal(out["audio"][0].numpy(), batch[0]["audio"][:5])  # first frames kept
    assert out["audio_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert out["vision"].shape == (2, 1, 2) and not out["vision_mask"].any()  # La, Lv ≥ 1 always
    assert out["mask_pos"].tolist() == [2, 3] and out["mask_pos"].dtype == torch.long
    assert out["mask_label"].tolist() == [1.25, -0.5]
    with pytest.raises(ValueError, match="mask_pos 7 falls outside"):
        Collator(max_text_len=6)([item(1, 9, 1, 1, mask_pos=7, mask_label=0.0)])


def test_collator_from_config_takes_the_caps_and_the_tokenizers_pad_id() -> None:
    cfg = ModelConfig(max_text_len=4, max_audio_len=2, max_vision_len=3)
    batch = [item(1, 6, 5, 5), item(2, 2, 1, 0)]
    out = Collator.from_config(cfg, pad_id=9)(batch)
    assert out["input_ids"].tolist() == [[100, 101, 102, 103], [200, 201, 9, 9]]
    assert out["audio"].shape[1] == 2 and out["vision"].shape[1] == 3
    # a tokenizer without a pad token (pad_token_id None) pads with 0
    assert Collator.from_config(cfg, pad_id=None)(batch)["input_ids"][1].tolist() == [200, 201, 0, 0]


def test_store_widths_are_the_feature_counts_and_one_for_a_text_only_store(tmp_path: Path) -> None:
    for audio, vision, expected in (([f"a{i}" for i in range(3)], ["v0", "v1"], (3, 2)), ([], [], (1, 1))):
        path = tmp_path / f"{len(audio)}.h5"
        StoreWriter(path, audio, vision).close()
        assert FeatureStore(path).widths() == expected


def write_store(path: Path, n: int = 40) -> list[Sample]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        samples.append(Sample(
            id=f"s{i}", text=f"text {i} " + "word " * (i % 5),
            audio=rng.standard_normal((int(rng.integers(0, 9)), 3)).astype(np.float32),
            vision=rng.standard_normal((int(rng.integers(0, 4)), 2)).astype(np.float32),
            label=float(i % 7 - 3), split=("train", "valid", "test")[i % 3],
        ))
    with StoreWriter(path, ["a0", "a1", "a2"], ["v0", "v1"]) as writer:
        for s in samples:
            writer.add(s)
    return samples


class CountingEncoder:
    """Token ids = [1, word count, 2]; mask_pos 1; remembers every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[dict]:
        self.calls.append(list(texts))
        return [{"input_ids": [1, len(t.split()), 2], "mask_pos": 1, "mask_label": float(len(t))} for t in texts]


def test_dataset_encodes_texts_once_and_reads_frames_lazily(tmp_path: Path) -> None:
    samples = write_store(tmp_path / "s.h5")
    encoder = CountingEncoder()
    ds = StoreDataset(tmp_path / "s.h5", split="valid", text_encoder=encoder)
    valid = [i for i in range(40) if i % 3 == 1]
    assert ds.indices.tolist() == valid and len(ds) == len(valid)
    assert encoder.calls == [[samples[i].text for i in valid]]  # once, the split's texts in store order
    for _ in range(2):  # "epochs"
        for k in range(len(ds)):
            it = ds[k]
    assert len(encoder.calls) == 1
    it = ds[2]
    s = samples[valid[2]]
    assert it["index"] == valid[2] and it["label"] == s.label
    assert it["input_ids"].tolist() == [1, len(s.text.split()), 2]
    assert it["mask_pos"] == 1 and it["mask_label"] == float(len(s.text))
    np.testing.assert_array_equal(it["audio"], s.audio)
    np.testing.assert_array_equal(it["vision"], s.vision)
    assert StoreDataset(FeatureStore(tmp_path / "s.h5"), split=["train", "test"]).indices.tolist() == [
        i for i in range(40) if i % 3 != 1]
    with pytest.raises(ValueError, match="2 encodings for 40 texts"):
        StoreDataset(tmp_path / "s.h5", text_encoder=lambda texts: [{"input_ids": [1]}] * 2)


def test_dataloader_with_two_workers(tmp_path: Path) -> None:
    samples = write_store(tmp_path / "s.h5", n=64)
    ds = StoreDataset(tmp_path / "s.h5", text_encoder=CountingEncoder())
    ds.store.audio(5)  # the parent holds an open handle too: workers must not reuse it
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, collate_fn=Collator(50, 6, 55),
                        generator=torch.Generator().manual_seed(0))
    seen = []
    for batch in loader:
        for row, i in enumerate(batch["index"].tolist()):
            seen.append(i)
            n = min(len(samples[i].audio), 6)
            assert batch["audio_mask"][row].sum() == n
            np.testing.assert_array_equal(batch["audio"][row, :n].numpy(), samples[i].audio[:n])
            nv = len(samples[i].vision)
            np.testing.assert_array_equal(batch["vision"][row, :nv].numpy(), samples[i].vision)
            assert batch["label"][row] == samples[i].label
        assert batch["audio"].shape[1] <= 6
    assert sorted(seen) == list(range(64))

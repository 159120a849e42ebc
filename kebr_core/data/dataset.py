"""The training data path: a torch Dataset over a feature store, and the collate that pads batches.

`StoreDataset` tokenises every text once, at construction (docs/design.md §6: never per epoch), and keeps
the token ids flat in NumPy arrays, so forked DataLoader workers share them without copy-on-write
growth; audio and vision are read from the store per item, lazily, by each worker's own handle.

`Collator` pads each batch to its own longest sequence (capped by the max lengths; longer sequences
keep their first frames) with index arithmetic: the only Python iteration is over the B items of
the batch to collect their arrays, never over frames or tokens.

Batch (the contract the model and recipes use):
    input_ids      (B, Lt)      long   token ids, padded with pad_id
    attention_mask (B, Lt)      bool   True = real token
    audio          (B, La, d_a) float32, zero where padded
    audio_mask     (B, La)      bool   True = real frame (an all-False row = no audio)
    vision         (B, Lv, d_v) float32
    vision_mask    (B, Lv)      bool
    label          (B,)         float32 (NaN = unlabeled)
    index          (B,)         long   store index of each sample
    mask_pos       (B,)         long   only when the text encoder gave it (pretraining)
    mask_label     (B,)         float32 only with mask_pos
La, Lv ≥ 1 always (a batch with no frames at all gets one padded frame) so shapes stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kebr_core.config import ModelConfig
from kebr_core.data.store import FeatureStore

TextEncoder = Callable[[list[str]], list[dict]]


class StoreDataset(Dataset):
    """Samples of a store restricted to split(s), with texts encoded once.

    store: a FeatureStore or its path. split: a split name, several, or None for all samples.
    labeled_only: keep only the samples whose label is not NaN (fine-tuning and evaluation).
    text_encoder(texts) → one dict per text with "input_ids" (list[int]) and optionally "mask_pos"
    (int) and "mask_label" (float); it is called once with the texts of the selected samples, in
    store order. None = no text keys in the items (and none in the batch).

    Item k is a dict: index (store index), input_ids (Lt,) int64, audio (La, d_a), vision (Lv, d_v),
    label (float), and mask_pos / mask_label when the encoder gave them.
    """

    def __init__(
        self,
        store: FeatureStore | str | Path,
        split: str | Sequence[str] | None = None,
        text_encoder: TextEncoder | None = None,
        labeled_only: bool = False,
    ):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.indices: np.ndarray = self.store.indices(split)  # (N,) store indices
        if labeled_only:
            self.indices = self.indices[~np.isnan(self.store.labels[self.indices])]
        self.labels: np.ndarray = self.store.labels[self.indices]
        self._token_ids: np.ndarray | None = None
        self._mask_pos: np.ndarray | None = None
        self._mask_label: np.ndarray | None = None
        if text_encoder is not None:
            texts = self.store.texts
            self._encode(text_encoder, [texts[i] for i in self.indices])

    def _encode(self, text_encoder: TextEncoder, texts: list[str]) -> None:
        encoded = text_encoder(texts)
        if len(encoded) != len(texts):
            raise ValueError(f"text_encoder returned {len(encoded)} encodings for {len(texts)} texts")
        ids = [np.asarray(e["input_ids"], dtype=np.int64).reshape(-1) for e in encoded]
        lengths = np.array([len(t) for t in ids], dtype=np.int64)
        self._token_offsets = np.concatenate([[0], np.cumsum(lengths)])
        self._token_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        has_mask = ["mask_pos" in e for e in encoded]
        if any(has_mask):
            if not all(has_mask):
                raise ValueError("text_encoder gave mask_pos for some texts but not for others")
            self._mask_pos = np.array([int(e["mask_pos"]) for e in encoded], dtype=np.int64)
            self._mask_label = np.array([float(e.get("mask_label", np.nan)) for e in encoded], dtype=np.float32)
            if (self._mask_pos < 0).any() or (self._mask_pos >= lengths).any():
                bad = int(np.flatnonzero((self._mask_pos < 0) | (self._mask_pos >= lengths))[0])
                raise ValueError(f"text {bad}: mask_pos {self._mask_pos[bad]} is outside its {lengths[bad]} tokens")

    def __len__(self) -> int:
        return len(self.indices)

    def lengths(self) -> np.ndarray:
        """(N, 3) int64: text tokens (0 without a text encoder), audio frames and vision frames per item."""
        audio, vision = self.store.lengths()
        text = np.diff(self._token_offsets) if self._token_ids is not None else np.zeros(len(self), np.int64)
        return np.stack([text, audio[self.indices], vision[self.indices]], axis=1)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = int(self.indices[k])
        item: dict[str, Any] = {
            "index": i,
            "audio": self.store.audio(i),
            "vision": self.store.vision(i),
            "label": float(self.labels[k]),
        }
        if self._token_ids is not None:
            item["input_ids"] = self._token_ids[self._token_offsets[k]: self._token_offsets[k + 1]]
        if self._mask_pos is not None:
            item["mask_pos"] = int(self._mask_pos[k])
            item["mask_label"] = float(self._mask_label[k])
        return item


def _pad(arrays: list[np.ndarray], cap: int, fill: float | int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged (L_b, *rest) arrays into (B, L, *rest), L = min(max L_b, cap) ≥ 1, keeping first frames.

    Returns the padded array and the (B, L) validity mask. One concatenate and one scattered
    assignment; no loop over frames.
    """
    lengths = np.minimum(np.array([len(a) for a in arrays], dtype=np.int64), cap)
    width = max(int(lengths.max(initial=0)), 1)
    rest = arrays[0].shape[1:]
    out = np.full((len(arrays), width, *rest), fill, dtype=dtype)
    total = int(lengths.sum())
    if total:
        flat = np.concatenate([a[:n] for a, n in zip(arrays, lengths.tolist())])
        rows = np.repeat(np.arange(len(arrays)), lengths)
        cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[rows, cols] = flat
    mask = np.arange(width)[None, :] < lengths[:, None]
    return out, mask


@dataclass
class Collator:
    """collate_fn for a DataLoader over StoreDataset: pads each batch to its own longest sequence.

    Sequences longer than a max length keep their first tokens/frames. A mask_pos that would be cut
    off by max_text_len is an error (the text encoder must truncate with the same max length and
    keep the masked word, docs/design.md §4).
    """

    max_text_len: int = 50
    max_audio_len: int = 400
    max_vision_len: int = 55
    pad_id: int = 0

    @classmethod
    def from_config(cls, cfg: ModelConfig, pad_id: int | None) -> "Collator":
        """The collate of a model configuration's length caps; pad_id: the tokenizer's (None → 0)."""
        return cls(cfg.max_text_len, cfg.max_audio_len, cfg.max_vision_len, pad_id=pad_id or 0)

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Tensor]:
        if not batch:
            raise ValueError("cannot collate an empty batch")
        out: dict[str, Tensor] = {}
        if "input_ids" in batch[0]:
            ids, text_mask = _pad([np.asarray(b["input_ids"]) for b in batch], self.max_text_len, self.pad_id, np.int64)
            out["input_ids"] = torch.from_numpy(ids)
            out["attention_mask"] = torch.from_numpy(text_mask)
            # Flat positions b·Lt + t of the valid tokens, found here on the CPU so the model can skip
            # text padding without a host-device synchronisation (TCMFLayer.forward).
            out["text_index"] = torch.from_numpy(np.flatnonzero(text_mask))
        for modality, cap in (("audio", self.max_audio_len), ("vision", self.max_vision_len)):
            arrays = [b[modality] for b in batch]
            if arrays[0].shape[1] == 0:
                # A text-only store (e.g. imported from label.csv) names no features: give the model one
                # zero column, always masked, so its layers keep valid shapes.
                arrays = [np.zeros((len(a), 1), np.float32) for a in arrays]
            frames, mask = _pad(arrays, cap, 0.0, np.float32)
            out[modality] = torch.from_numpy(frames)
            out[f"{modality}_mask"] = torch.from_numpy(mask)
        out["label"] = torch.tensor([b["label"] for b in batch], dtype=torch.float32)
        out["index"] = torch.tensor([b["index"] for b in batch], dtype=torch.long)
        if "mask_pos" in batch[0]:
            mask_pos = torch.tensor([b["mask_pos"] for b in batch], dtype=torch.long)
            width = out["input_ids"].shape[1]
            if bool((mask_pos >= width).any()):
                raise ValueError(
                    f"mask_pos {int(mask_pos.max())} falls outside the text truncated to {width} tokens; "
                    f"encode texts with max_length ≤ max_text_len ({self.max_text_len})"
                )
            out["mask_pos"] = mask_pos
            out["mask_label"] = torch.tensor([b["mask_label"] for b in batch], dtype=torch.float32)
        return out


def collate(
    batch: list[dict[str, Any]], max_text_len: int = 50, max_audio_len: int = 400, max_vision_len: int = 55
) -> dict[str, Tensor]:
    """Functional form of `Collator` (pad id 0)."""
    return Collator(max_text_len, max_audio_len, max_vision_len)(batch)

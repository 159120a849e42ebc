"""Benchmark: a KEBR training epoch through kebr_core's recipe code vs the authors' training pipeline.

Data: the REAL transcripts, labels and splits of CMU-MOSI (`label.csv`, 2199 utterances) with random
audio/vision features of MOSI-like lengths, written to a temporary feature store. A clip's duration is
estimated from its word count (3 words/s, ±20 % log-normal jitter); audio is `kebr33` (22050 Hz, hop 512:
43 frames/s, 33 columns) capped at 400 frames, vision 10 frames/s (the extractor's default) × 709 columns
(OpenFace's width; `--d-vision`) capped at 55 frames. Mean lengths: ~15 tokens, ~170 audio, ~40 vision frames.

Both sides use the SAME model weights and modules (one `KEBRModel`: text encoder, `TCMF`, heads; copied
so each side trains its own), the same optimiser settings (paper preset: Adam, batch 32), the same store
and the same samples, so only the computation around the modules differs:

  authors' pipeline (written here, after the authors' code)
    - `__getitem__` tokenises (and, for pretraining, masks) its text, pads every item to a FIXED 39
      tokens / 400 audio / 55 vision frames, and turns each array into a tensor on the device;
    - TCMF (`authors_tcmf`): the shared layer is applied K times as a layer module, so each application
      projects X0a and X0v to keys and values again, and runs its FFN over every padded text position;
    - MCC (Eq. 9–13) is a per-sample Python loop: flatten, L2-normalise, materialise the tiled shorter
      vector, `if c_a >= 0 and c_v >= 0` in Python;
    - pretraining: the frozen encoder's forward pass is recomputed at every step of every epoch.
  kebr_core (the recipe's own code)
    - `kebr_core.training.train_epoch` itself (the epoch loop both recipes call), after the recipes'
      set-up: texts masked (`mask_batch`) or tokenised (`tokenize_plain`) once, `StoreDataset`,
      `Collator` with dynamic padding of length-bucketed batches, `TCMF.forward` (keys and values of
      X0a, X0v projected once per forward, the FFN on valid text tokens only), the batch-vectorised
      `mcc_loss` inside `KEBRModel.forward`, and for pretraining the frozen encoder's outputs computed
      once (`build_text_cache`).

Fine-tuning trains the encoder on both sides (`kebr eval`'s default; lr 5e-6). Texts are truncated at
39 tokens on both sides (the authors' MOSI length; the recipe's default is 50). Before timing, the bench
checks that both pipelines compute the same loss on the same batch (dropout off).

Per-epoch times are per-step times × steps per epoch, measured on `--steps` random batches after 2
warm-up steps (best of `--repeats` passes, the two sides interleaved so a busy machine hits both); `--full`
times whole epochs instead. The validation pass is not part of either side's epoch. The text cache of
pretraining is a one-off cost per run (not per epoch) and is reported separately.

    python bench/train_step.py                              # CPU, embedded MiniLM, both stages
    python bench/train_step.py --full                       # whole epochs (pretraining 69 steps, fine-tuning 41)
    python bench/train_step.py --stage pretrain --steps 20
    python bench/train_step.py --device cuda --text-model random-bert:hidden=768,layers=12,heads=12  # BERT-base size, bf16

Targets (issue 5): a pretraining epoch ≥ 3× faster, a fine-tuning epoch ≥ 1.5× faster on CPU.
Measured numbers, and what limits them, are in docs/bench-training.md.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_label_csv_option, check_label_csv, cpu_name  # noqa: E402
from kebr_core.config import MCCConfig, RunConfig, paper_preset  # noqa: E402
from kebr_core.data.dataset import Collator, StoreDataset  # noqa: E402
from kebr_core.data.store import FeatureStore, Sample, StoreWriter  # noqa: E402
from kebr_core.lexicon import load_lexicon  # noqa: E402
from kebr_core.masking import mask_batch, mask_sentiment_word, split_words, tokenize_plain  # noqa: E402
from kebr_core.model import KEBRModel  # noqa: E402
from kebr_core.text_encoder import load_tokenizer  # noqa: E402
from kebr_core.modules.pooling import masked_mean  # noqa: E402
from kebr_core.distributed import DistInfo, EpochBatches  # noqa: E402
from kebr_core.training import adam, autocast, bucket_sizes, build_text_cache, move, train_epoch  # noqa: E402

D_AUDIO = 33
AUDIO_FPS = 22050 / 512  # kebr33: 43.07 frames/s
VISION_FPS = 10.0
WORDS_PER_SECOND = 3.0
# The authors' fixed padding for MOSI.
FIXED_TEXT, FIXED_AUDIO, FIXED_VISION = 39, 400, 55


# ───────────────────────── data: real transcripts, random MOSI-like features ─────────────────────────


def read_label_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def build_store(path: Path, rows: list[dict[str, str]], d_vision: int, seed: int = 0) -> dict[str, float]:
    """Write the MOSI rows with random features of MOSI-like lengths; returns length statistics."""
    rng = np.random.default_rng(seed)
    n_words = np.array([max(len(r["text"].split()), 1) for r in rows], dtype=np.float64)
    seconds = n_words / WORDS_PER_SECOND * rng.lognormal(0.0, 0.2, len(rows))
    audio_len = np.clip(np.round(seconds * AUDIO_FPS), 1, FIXED_AUDIO).astype(int)
    vision_len = np.clip(np.round(seconds * VISION_FPS), 1, FIXED_VISION).astype(int)
    with StoreWriter(path, [f"a{i}" for i in range(D_AUDIO)], [f"v{i}" for i in range(d_vision)],
                     audio_rate_hz=AUDIO_FPS, vision_fps=VISION_FPS, source="bench/train_step.py",
                     flush_every=512, flush_seconds=1e9) as writer:
        for r, la, lv in zip(rows, audio_len.tolist(), vision_len.tolist()):
            writer.add(Sample(
                id=f"{r['video_id']}$_${r['clip_id']}", text=r["text"],
                audio=rng.standard_normal((la, D_AUDIO), dtype=np.float32),
                vision=rng.standard_normal((lv, d_vision), dtype=np.float32),
                label=float(r["label"]), split=r["mode"], text_source="import",
            ))
    return {"audio": float(audio_len.mean()), "vision": float(vision_len.mean())}


# ───────────────────────── the authors' pipeline ─────────────────────────


def _pad_fixed(frames: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """Copy (L, d) frames into a zero (length, d) array, keeping the first `length` frames."""
    n = min(len(frames), length)
    out = np.zeros((length, frames.shape[1]), dtype=np.float32)
    out[:n] = frames[:n]
    return out, n


class AuthorsDataset(Dataset):
    """Per item: tokenise (and mask) the text, pad everything to fixed lengths, make device tensors.

    Item k is sample `indices[k]` of the store, as in `StoreDataset`, so both pipelines see the same
    samples at the same positions. Masking uses the same per-sample seed as `mask_batch`.
    """

    def __init__(self, store: FeatureStore, indices: np.ndarray, tokenizer: Any, stage: str,
                 device: torch.device, seed: int = 0):
        self.store, self.indices, self.tokenizer, self.stage = store, indices, tokenizer, stage
        self.device, self.seed = device, seed
        self.lexicon = load_lexicon() if stage == "pretrain" else None
        self.texts = store.texts

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = int(self.indices[k])
        item: dict[str, Any] = {}
        if self.stage == "pretrain":
            masked = mask_sentiment_word(self.texts[i], self.tokenizer, self.lexicon, FIXED_TEXT,
                                         random.Random(f"kebr-mask:{self.seed}:{i}"))
            ids = masked.input_ids
            item["mask_pos"] = torch.tensor(masked.mask_pos).to(self.device)
            item["mask_label"] = torch.tensor(masked.label, dtype=torch.float32).to(self.device)
        else:
            ids = self.tokenizer(split_words(self.texts[i]), is_split_into_words=True, truncation=True,
                                 max_length=FIXED_TEXT)["input_ids"]
        item["input_ids"] = torch.tensor(ids + [0] * (FIXED_TEXT - len(ids))).to(self.device)
        item["attention_mask"] = torch.tensor([1] * len(ids) + [0] * (FIXED_TEXT - len(ids))).to(self.device)
        audio, la = _pad_fixed(self.store.audio(i), FIXED_AUDIO)
        vision, lv = _pad_fixed(self.store.vision(i), FIXED_VISION)
        item["audio"] = torch.tensor(audio).to(self.device)
        item["vision"] = torch.tensor(vision).to(self.device)
        item["audio_len"] = torch.tensor(la).to(self.device)
        item["vision_len"] = torch.tensor(lv).to(self.device)
        item["label"] = torch.tensor(float(self.store.labels[i]), dtype=torch.float32).to(self.device)
        return item


def _tiled_cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Flatten-normalise-tile cosine of two 1-D vectors: the shorter one is materialised tiled r times
    and zero-padded to the longer length (as the authors)."""
    u, v = F.normalize(u, dim=0), F.normalize(v, dim=0)
    if u.numel() < v.numel():
        u, v = v, u
    r = u.numel() // v.numel()
    tiled = torch.cat([v.repeat(r), v.new_zeros(u.numel() - r * v.numel())])
    return (u * tiled).sum() / tiled.norm()


def authors_mcc(fused: torch.Tensor, text_len: list[int], audio: torch.Tensor, audio_len: list[int],
                vision: torch.Tensor, vision_len: list[int], cfg: MCCConfig) -> torch.Tensor:
    """L_mcc (Eq. 10–12, or the "reference" form) as a per-sample Python loop with a Python branch."""
    eps = 1e-6
    losses = []
    for i in range(fused.shape[0]):
        if text_len[i] == 0 or audio_len[i] == 0 or vision_len[i] == 0:
            continue
        t = fused[i, : text_len[i]].float().reshape(-1)
        c_a = _tiled_cosine(t, audio[i, : audio_len[i]].float().reshape(-1))
        c_v = _tiled_cosine(t, vision[i, : vision_len[i]].float().reshape(-1))
        if cfg.form == "paper":
            theta_a, theta_v = torch.acos(c_a.clamp(-1 + eps, 1 - eps)), torch.acos(c_v.clamp(-1 + eps, 1 - eps))
            y = torch.cos((theta_a + theta_v) / 2) * torch.exp((theta_a - theta_v).abs())
            f = cfg.s * torch.cos(math.pi * (y + cfg.g)).abs()
            if not (c_a >= 0 and c_v >= 0):  # a Python branch on tensor values: a host sync per sample
                f = cfg.s + f
        elif c_a >= 0 and c_v >= 0:
            f = cfg.s * torch.cos(math.pi * ((c_a + c_v) / 2 + cfg.g) * torch.exp(0.5 * (c_a - c_v).abs())).abs()
        else:
            f = cfg.s * (1 + c_a.abs() + c_v.abs())
        losses.append(f)
    return torch.stack(losses).mean() if losses else fused.sum() * 0


def authors_tcmf(model: KEBRModel, x0t: torch.Tensor, audio: torch.Tensor, audio_mask: torch.Tensor,
                 vision: torch.Tensor, vision_mask: torch.Tensor) -> torch.Tensor:
    """X_K as the authors compute it: the shared TCMF layer applied K times, each application projecting
    X0a and X0v to keys and values again, over every (padded) text position. Same modules and weights as
    `TCMF.forward`, which projects once per forward and skips text padding in the FFN."""
    tcmf = model.fusion
    x = x0t
    for k in range(tcmf.num_layers):
        x = tcmf.layers[0 if tcmf.shared else k](x, audio, audio_mask, vision, vision_mask).fused
    return x


def authors_loss(model: KEBRModel, batch: dict[str, torch.Tensor], cfg: RunConfig, stage: str,
                 device: torch.device) -> torch.Tensor:
    """One step's loss: encoder forward on the fixed-length batch (no_grad when frozen), then the authors'
    TCMF loop (`authors_tcmf`), the same heads as `KEBRModel.forward`, and the looped MCC."""
    text_mask = batch["attention_mask"].bool()
    frames = torch.arange(FIXED_AUDIO, device=device)
    audio_mask = frames[None, :] < batch["audio_len"][:, None]
    vision_mask = frames[None, :FIXED_VISION] < batch["vision_len"][:, None]
    with autocast(device, cfg.train.bf16):
        if stage == "pretrain":
            with torch.no_grad():  # frozen: recomputed every step, never changes
                x0t = model.encode_text(batch["input_ids"], text_mask)
        else:
            x0t = model.encode_text(batch["input_ids"], text_mask)
        fused = authors_tcmf(model, x0t, batch["audio"], audio_mask, batch["vision"], vision_mask)
        fused_mask = text_mask
        if stage == "pretrain":
            idx = batch["mask_pos"].view(-1, 1, 1).expand(-1, 1, fused.shape[-1])
            pred = model.pretrain_head(fused.gather(1, idx).squeeze(1))
            target = batch["mask_label"]
        else:
            pred = model.finetune_head(masked_mean(fused, fused_mask))
            target = batch["label"]
    lengths = [x.tolist() for x in (text_mask.sum(1), batch["audio_len"], batch["vision_len"])]
    mcc = authors_mcc(fused, lengths[0], batch["audio"], lengths[1], batch["vision"], lengths[2], cfg.mcc)
    return (pred.float() - target).abs().mean() + cfg.mcc.weight * mcc


def authors_epoch(model: KEBRModel, dataset: Dataset, opt: torch.optim.Optimizer, cfg: RunConfig, stage: str,
                  device: torch.device, epoch: int) -> None:
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(epoch))
    model.train()
    if stage == "pretrain":
        model.encoder.eval()
    for batch in loader:
        loss = authors_loss(model, batch, cfg, stage, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())  # the authors log the loss every step


# ───────────────────────── kebr_core ─────────────────────────


def ours_loss(model: KEBRModel, batch: dict[str, torch.Tensor], cache, cfg: RunConfig, stage: str,
              device: torch.device):
    """The loss of `kebr_core.training.train_epoch` (single process), for the equality check."""
    hidden = cache.gather(batch["index"], batch["input_ids"].shape[1]) if cache is not None else None
    with autocast(device, cfg.train.bf16):
        out = model(batch, task=stage, text_hidden=hidden)
    target = batch["mask_label"] if stage == "pretrain" else batch["label"]
    task_loss = (out.pred.float() - target).abs().mean()
    return task_loss + cfg.mcc.weight * out.mcc.loss.float(), task_loss, out


# ───────────────────────── timing ─────────────────────────


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def prepare_model(base_model: KEBRModel, stage: str, device: torch.device) -> KEBRModel:
    """A copy of the shared model set up as the recipes do (encoder frozen for pretraining)."""
    model = copy.deepcopy(base_model).to(device)
    model.set_encoder_trainable(stage == "finetune")
    (model.finetune_head if stage == "pretrain" else model.pretrain_head).requires_grad_(False)
    return model


def optimizer_for(model: KEBRModel, cfg: RunConfig, stage: str, fused: bool = False) -> torch.optim.Optimizer:
    """The recipes' parameter groups (pretraining: fusion + head; fine-tuning: + encoder) and Adam
    (`kebr_core.training.adam`: the per-parameter loop, as the recipes and the authors; fused=True for
    the fused kernel)."""
    if stage == "pretrain":
        groups = [{"params": model.fusion_parameters() + list(model.pretrain_head.parameters()), "lr": cfg.train.lr}]
    else:
        groups = [
            {"params": model.fusion_parameters(), "lr": cfg.train.lr if cfg.train.lr_fusion is None else cfg.train.lr_fusion},
            {"params": list(model.finetune_head.parameters()), "lr": cfg.train.lr},
            {"params": list(model.encoder.parameters()), "lr": cfg.train.lr_encoder},
        ]
    return adam(groups, cfg.train.weight_decay, fused=fused)


def build_base_model(text_model: str, d_vision: int) -> KEBRModel:
    """The model both pipelines copy: the default KEBR settings at the bench's MOSI shapes."""
    cfg = RunConfig()
    cfg.model.text_model, cfg.model.max_text_len = text_model, FIXED_TEXT
    cfg.model.d_audio, cfg.model.d_vision = D_AUDIO, d_vision
    return KEBRModel(cfg.model, cfg.mcc)


def stage_config(stage: str, base_model: KEBRModel, device: torch.device, bf16: bool | None,
                 workers: int | None) -> RunConfig:
    """The paper preset of a stage with the bench's model settings (fine-tuning trains the encoder)."""
    cfg = paper_preset(stage)
    cfg.model = copy.deepcopy(base_model.cfg)
    cfg.train.device, cfg.train.bf16, cfg.train.unfreeze = str(device), bf16, stage == "finetune"
    cfg.train.workers = workers
    return cfg


def kebr_setup(stage: str, store_path: Path, base_model: KEBRModel, tokenizer: Any, cfg: RunConfig,
               device: torch.device) -> tuple[StoreDataset, Collator, Any, KEBRModel]:
    """kebr_core's side as the recipes set it up (pretrain(): mask once, encode once; finetune(): tokenise
    once): its dataset, Collator, text cache (None when fine-tuning) and a fresh copy of the model."""
    store = FeatureStore(store_path)
    split = None if stage == "pretrain" else "train"
    if stage == "pretrain":
        masked = mask_batch(store.texts, tokenizer, load_lexicon(), cfg.model.max_text_len, seed=cfg.train.seed)
        encoded = [{"input_ids": m.input_ids, "mask_pos": m.mask_pos, "mask_label": m.label} for m in masked]
    else:
        token_ids = tokenize_plain(store.texts, tokenizer, cfg.model.max_text_len)
        encoded = [{"input_ids": token_ids[i]} for i in store.indices(split)]
    data = StoreDataset(store_path, split=split, text_encoder=lambda texts: encoded)
    collate = Collator.from_config(cfg.model, tokenizer.pad_token_id)
    model = prepare_model(base_model, stage, device)
    cache = None
    if stage == "pretrain":
        cache = build_text_cache(model.encoder, [e["input_ids"] for e in encoded], device)
    return data, collate, cache, model


def run_stage(stage: str, store_path: Path, base_model: KEBRModel, tokenizer: Any, args, device: torch.device) -> dict:
    cfg = stage_config(stage, base_model, device, args.bf16, args.workers)
    store = FeatureStore(store_path)
    indices = store.indices(None if stage == "pretrain" else "train")
    n, bsz = len(indices), cfg.train.batch_size
    steps_per_epoch = math.ceil(n / bsz)

    t0 = time.perf_counter()
    ours_data, collate, cache, ours_model = kebr_setup(stage, store_path, base_model, tokenizer, cfg, device)
    sync(device)
    one_off = time.perf_counter() - t0
    ours_opt = optimizer_for(ours_model, cfg, stage)

    authors_model = prepare_model(base_model, stage, device)
    authors_data = AuthorsDataset(store, indices, tokenizer, stage, device, seed=cfg.train.seed)
    authors_opt = optimizer_for(authors_model, cfg, stage, fused=False)

    # Same loss on the same batch (dropout off, fp32): only the pipeline differs.
    check_idx = list(range(min(bsz, n)))
    ours_model.eval(), authors_model.eval()
    with torch.no_grad():
        check_cfg = copy.deepcopy(cfg)
        check_cfg.train.bf16 = False
        ours_batch = move(collate([ours_data[k] for k in check_idx]), device)
        authors_batch = torch.utils.data.default_collate([authors_data[k] for k in check_idx])
        loss_ours = float(ours_loss(ours_model, ours_batch, cache, check_cfg, stage, device)[0])
        loss_authors = float(authors_loss(authors_model, authors_batch, check_cfg, stage, device))

    def ours_epoch(subset: Dataset, epoch: int) -> None:
        train_epoch(ours_model, subset, collate, cache, ours_opt, cfg, device, epoch, task=stage,
                    frozen=stage == "pretrain", info=DistInfo(), seed=cfg.train.seed)

    def theirs_epoch(subset: Dataset, epoch: int) -> None:
        authors_epoch(authors_model, subset, authors_opt, cfg, stage, device, epoch)

    rng = np.random.default_rng(1)
    warm = rng.permutation(n)[: 2 * bsz].tolist()
    timed_steps = steps_per_epoch if args.full else min(args.steps, steps_per_epoch)
    timed_idx = list(range(n)) if args.full else rng.permutation(n)[: timed_steps * bsz].tolist()
    for fn in (ours_epoch, theirs_epoch):  # warm-up: allocator, threads, tokenizer caches
        fn(Subset(ours_data if fn is ours_epoch else authors_data, warm), 0)
    best = {"ours": math.inf, "authors": math.inf}
    for rep in range(args.repeats):
        for side, fn, data in (("ours", ours_epoch, ours_data), ("authors", theirs_epoch, authors_data)):
            sync(device)
            start = time.perf_counter()
            fn(Subset(data, timed_idx), rep + 1)
            sync(device)
            best[side] = min(best[side], time.perf_counter() - start)
    per_step = {side: t / timed_steps for side, t in best.items()}

    # The data pipeline alone (the same batches, no model): per-item work vs the Collator.
    data_time = {}
    for side, loader in (
        ("ours", DataLoader(Subset(ours_data, timed_idx), collate_fn=collate,
                            batch_sampler=EpochBatches(len(timed_idx), bsz, cfg.train.seed, 1, DistInfo(),
                                                       sizes=bucket_sizes(Subset(ours_data, timed_idx), cfg)))),
        ("authors", DataLoader(Subset(authors_data, timed_idx), batch_size=bsz, shuffle=True,
                               generator=torch.Generator().manual_seed(1))),
    ):
        widths = []
        start = time.perf_counter()
        for batch in loader:
            widths.append([batch[k].shape[1] for k in ("input_ids", "audio", "vision")])
        data_time[side] = (time.perf_counter() - start) / timed_steps
        if side == "ours":  # how much dynamic padding with length-bucketed batches saves
            padded = np.mean(widths, axis=0).tolist()
    return {
        "stage": stage, "samples": n, "steps_per_epoch": steps_per_epoch, "timed_steps": timed_steps,
        "per_step": per_step, "data_per_step": data_time, "padded": padded,
        "epoch": {s: t * steps_per_epoch for s, t in per_step.items()},
        "one_off": one_off, "loss_check": (loss_ours, loss_authors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_label_csv_option(parser)
    parser.add_argument("--stage", choices=["both", "pretrain", "finetune"], default="both")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--text-model", default="embedded",
                        help="embedded MiniLM (default), a HF name/folder, or random-bert:hidden=768,layers=12,heads=12")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast on both sides (default: on for cuda, off for cpu)")
    parser.add_argument("--d-vision", type=int, default=709, help="vision feature width (OpenFace: 709)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side and stage")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per side; the fastest counts")
    parser.add_argument("--full", action="store_true", help="time whole epochs instead of --steps steps")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--workers", type=int, default=0,
                        help="kebr's DataLoader workers (default 0: timed --steps would count the workers' start-up "
                             "of every epoch call; the recipes' own default on CUDA is up to 4)")
    args = parser.parse_args()
    check_label_csv(parser, args.label_csv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA GPU")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    load_start = os.getloadavg()[0]
    if load_start > (os.cpu_count() or 1):
        print(f"note: load average {load_start:.1f} on {os.cpu_count()} cores: the CPU is shared; torch's OpenMP "
              "threads spin-wait on each other when descheduled, so --threads 1 gives steadier numbers")
    rows = read_label_csv(args.label_csv)
    stages = ["pretrain", "finetune"] if args.stage == "both" else [args.stage]
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "mosi-like.h5"
        t0 = time.perf_counter()
        mean_len = build_store(store_path, rows, args.d_vision)
        print(f"store: {len(rows)} MOSI transcripts, random audio {D_AUDIO}-d (mean {mean_len['audio']:.0f} frames, "
              f"≤{FIXED_AUDIO}) and vision {args.d_vision}-d (mean {mean_len['vision']:.0f} frames, ≤{FIXED_VISION}); "
              f"built in {time.perf_counter() - t0:.1f} s")
        base_model = build_base_model(args.text_model, args.d_vision)
        tokenizer = load_tokenizer(args.text_model)
        bf16 = (device.type == "cuda") if args.bf16 is None else args.bf16
        print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with "
              f"{torch.get_num_threads()} threads; device {device}"
              + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
              + f"; bf16 {'on' if bf16 else 'off'}")
        print(f"model: {args.text_model} (d_t {base_model.d_text}), TCMF K={base_model.cfg.layers} shared, batch 32, "
              f"text ≤{FIXED_TEXT} tokens; {'whole epochs' if args.full else f'{args.steps} steps per side'}, "
              f"best of {args.repeats}")
        results = [run_stage(stage, store_path, base_model, tokenizer, args, device) for stage in stages]

    print()
    print("| stage | pipeline | s/step | of it data | steps/epoch | s/epoch | samples/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        for side, name in (("authors", "authors' (fixed padding, per-item tensors, K/V per layer, MCC loop"
                            + (", encoder every step)" if r["stage"] == "pretrain" else ")")),
                           ("ours", "kebr_core (" + ("TextCache, " if r["stage"] == "pretrain" else "")
                            + "bucketed StoreDataset + Collator, TCMF, mcc_loss)")):
            s = r["per_step"][side]
            print(f"| {r['stage']} | {name} | {s:.3f} | {r['data_per_step'][side]:.3f} | {r['steps_per_epoch']} | "
                  f"{r['epoch'][side]:.1f} | "
                  f"{r['samples'] / r['epoch'][side]:.0f} |")
    print()
    targets = {"pretrain": 3.0, "finetune": 1.5}
    for r in results:
        ratio = r["epoch"]["authors"] / r["epoch"]["ours"]
        line = (f"{r['stage']}: epoch {ratio:.2f}× faster (target ≥ {targets[r['stage']]}×, "
                f"{'met' if ratio >= targets[r['stage']] else 'NOT met'}); "
                f"loss check ours {r['loss_check'][0]:.6f} vs authors' {r['loss_check'][1]:.6f}")
        p = r["padded"]
        line += (f"; kebr_core's batches are padded to {p[0]:.1f} tokens / {p[1]:.0f} audio / {p[2]:.1f} vision "
                 f"frames on average (authors': {FIXED_TEXT} / {FIXED_AUDIO} / {FIXED_VISION})")
        if r["stage"] == "pretrain":
            first = r["epoch"]["authors"] / (r["epoch"]["ours"] + r["one_off"])
            line += (f"; one-off masking + text cache {r['one_off']:.1f} s per run "
                     f"(counted in one epoch: {first:.2f}×)")
        print(line)
    load_end = os.getloadavg()[0]
    print(f"load average (1 min) at start {load_start:.1f}, at end {load_end:.1f} on {os.cpu_count()} cores"
          + (": the CPU was shared with other work, so absolute times are inflated; both sides were "
             "interleaved, so the ratios are the comparable numbers" if max(load_start, load_end) > os.cpu_count() else ""))
    print(f"command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()

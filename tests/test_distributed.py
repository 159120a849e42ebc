"""EpochBatches: the global batches of an epoch, split across ranks, optionally length-bucketed; DDP
with gloo on the CPU matching one process, also when the last batch is smaller than the world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kebr_core.distributed import DistInfo, EpochBatches, global_mean
from tests.conftest import TINY_BERT, write_tiny_store


def flat(batches) -> list[int]:
    return sorted(i for b in batches for i in b)


def test_random_batches_cover_every_sample_once_and_depend_on_seed_and_epoch() -> None:
    a = list(EpochBatches(100, 32, seed=0, epoch=1, info=DistInfo()))
    assert flat(a) == list(range(100)) and [len(b) for b in a] == [32, 32, 32, 4]
    assert a == list(EpochBatches(100, 32, seed=0, epoch=1, info=DistInfo()))
    assert a != list(EpochBatches(100, 32, seed=0, epoch=2, info=DistInfo()))


def test_ranks_split_each_global_batch() -> None:
    whole = list(EpochBatches(70, 8, seed=3, epoch=1, info=DistInfo()))
    r0 = list(EpochBatches(70, 8, seed=3, epoch=1, info=DistInfo(rank=0, world=2)))
    r1 = list(EpochBatches(70, 8, seed=3, epoch=1, info=DistInfo(rank=1, world=2)))
    for w, a, b in zip(whole, r0, r1):
        assert sorted(a + b) == sorted(w) and abs(len(a) - len(b)) <= 1


def test_length_bucketing_pads_less_and_stays_deterministic() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.uniform(0, 1, 2000)
    plain = list(EpochBatches(2000, 32, seed=0, epoch=1, info=DistInfo()))
    bucketed = list(EpochBatches(2000, 32, seed=0, epoch=1, info=DistInfo(), sizes=sizes, pool=10))
    assert flat(bucketed) == list(range(2000))
    assert bucketed == list(EpochBatches(2000, 32, seed=0, epoch=1, info=DistInfo(), sizes=sizes, pool=10))
    # Padding waste: each batch pads to its largest member.
    waste = lambda bs: np.mean([sizes[b].max() - sizes[b].mean() for b in bs])  # noqa: E731
    assert waste(bucketed) < 0.2 * waste(plain)  # pools of 10 batches: ~1/10 of the spread per batch
    # The batch order is shuffled, not sorted by size within the epoch.
    maxima = [sizes[b].max() for b in bucketed]
    assert maxima != sorted(maxima)


def test_global_mean_single_process_is_the_weighted_mean() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 10.0])
    w = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert float(global_mean(x, w, DistInfo())) == 2.0
    assert float(global_mean(x, torch.zeros(4), DistInfo())) == 0.0


@pytest.mark.parametrize("world", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [1, 2, 7, 33, 34, 1284, 16326])
def test_no_rank_ever_gets_an_empty_batch(world: int, n: int) -> None:
    """MOSI's 1,284 and MOSEI's 16,326 training samples in batches of 32, and sizes one or two past a
    multiple of the batch, on 2–8 ranks: every rank gets a batch at every step, and the weight-1
    samples of the ranks are exactly the global batches of one process."""
    batch = 32 if n > 100 else 8
    single = EpochBatches(n, batch, seed=1, epoch=2, info=DistInfo())
    ranks = [EpochBatches(n, batch, seed=1, epoch=2, info=DistInfo(rank=r, world=world)) for r in range(world)]
    assert all(len(s) == len(single) for s in ranks)  # every rank takes the same number of steps
    rank_batches = [list(s) for s in ranks]
    for step, whole in enumerate(single):
        shares = [(b[step], s.weights(step)) for b, s in zip(rank_batches, ranks)]
        assert all(len(indices) >= 1 and len(indices) == len(w) for indices, w in shares)
        real = [i for indices, w in shares for i, wi in zip(indices, w.tolist()) if wi == 1.0]
        padding = [i for indices, w in shares for i, wi in zip(indices, w.tolist()) if wi == 0.0]
        assert sorted(real) == sorted(whole)
        assert set(padding) <= set(whole)  # padding repeats the batch's own samples
        assert len(padding) == (world - len(whole) if len(whole) < world else 0)


def test_padding_weights_count_nowhere_in_the_global_mean() -> None:
    """A last global batch of 1 sample on 3 ranks: ranks 1 and 2 get a weight-0 copy, so the mean is that
    sample's value (a single process's), not the average of the copies."""
    ranks = [EpochBatches(9, 8, seed=0, epoch=1, info=DistInfo(rank=r, world=3), shuffle=False) for r in range(3)]
    assert [list(s)[1] for s in ranks] == [[8], [8], [8]]
    assert [s.weights(1).tolist() for s in ranks] == [[1.0], [0.0], [0.0]]
    values = torch.tensor([5.0])
    shares = [float(global_mean(values * (r + 1), s.weights(1), DistInfo())) for r, s in enumerate(ranks)]
    assert shares == [5.0, 0.0, 0.0]


# ───────────────────── DDP with gloo: 2 and 3 processes reproduce 1 process ─────────────────────


def tiny_fine_tuning(store: str):
    """(cfg, train dataset, token ids, model) of a tiny fine-tuning on `store`'s train split, seeded."""
    from kebr_core.config import RunConfig
    from kebr_core.data.dataset import StoreDataset
    from kebr_core.masking import tokenize_plain
    from kebr_core.model import KEBRModel
    from kebr_core.text_encoder import load_tokenizer
    from kebr_core.training import seed_everything

    cfg = RunConfig()
    cfg.model.text_model, cfg.model.head_hidden, cfg.model.dropout = TINY_BERT, 16, 0.0
    cfg.model.d_audio, cfg.model.d_vision = 7, 5
    cfg.train.batch_size, cfg.train.device, cfg.train.workers = 8, "cpu", 0
    seed_everything(0)
    dataset = StoreDataset(store, "train")
    tokenizer = load_tokenizer(TINY_BERT)
    token_ids = tokenize_plain(dataset.store.texts, tokenizer, cfg.model.max_text_len)
    dataset = StoreDataset(store, "train", text_encoder=lambda texts: [{"input_ids": token_ids[i]} for i in dataset.indices])
    return cfg, dataset, token_ids, KEBRModel(cfg.model, cfg.mcc)


def _one_epoch(store: str, info: DistInfo, epochs: int = 2) -> dict:
    """The fine-tuning epochs of a tiny model on `store`'s train split, as the recipe runs them."""
    from torch.nn.parallel import DistributedDataParallel

    from kebr_core.data.dataset import Collator
    from kebr_core.errors import KebrError
    from kebr_core.training import build_text_cache, train_epoch

    cfg, dataset, token_ids, model = tiny_fine_tuning(store)
    model.set_encoder_trainable(False)
    model.pretrain_head.requires_grad_(False)
    cache = build_text_cache(model.encoder, token_ids, torch.device("cpu"))
    # SGD, not the recipe's Adam: Adam divides by √v and so turns the float noise of a gradient that is 0 in
    # exact arithmetic (the key bias: a shift common to all keys leaves the softmax alone) into ±lr steps.
    opt = torch.optim.SGD(model.fusion_parameters() + list(model.finetune_head.parameters()), lr=0.05)
    net = DistributedDataParallel(model) if info.enabled else model
    rows, error = [], None
    try:
        for epoch in (1, 2)[:epochs]:
            rows.append(train_epoch(net, dataset, Collator(), cache, opt, cfg, torch.device("cpu"), epoch,
                                    task="finetune", frozen=True, info=info, seed=0))
    except KebrError as e:
        error = str(e)
    return {"rows": rows, "error": error, "state": {k: v.clone() for k, v in model.state_dict().items()}}


def _ddp_worker(rank: int, world: int, init_file: str, store: str, out_dir: str, epochs=_one_epoch) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(epochs(store, DistInfo(rank=rank, world=world)), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ddp(world: int, store: Path, tmp_path: Path, epochs=_one_epoch) -> list[dict]:
    """`epochs(store, info)` (default `_one_epoch`) on `world` gloo processes: each rank's result."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(store), str(tmp_path), epochs), nprocs=world,
             join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def train_store(path: Path, n_train: int, nan_sample: int | None = None) -> Path:
    """A store of `n_train` training samples (tests/conftest's tiny store, all in split train)."""
    from kebr_core.data.store import FeatureStore, Sample, StoreWriter

    source = FeatureStore(write_tiny_store(path.with_suffix(".src.h5"), n=n_train))
    with StoreWriter(path, source.audio_features, source.vision_features) as w:
        for i in range(n_train):
            audio = source.audio(i).copy()
            if i == nan_sample:
                audio[:] = np.nan
            w.add(Sample(id=source.ids[i], text=source.texts[i], audio=audio, vision=source.vision(i),
                         label=float(source.labels[i]), split="train"))
    return path


@pytest.mark.parametrize("world, n_train", [(2, 33), (3, 34)])
def test_ddp_with_a_short_last_batch_matches_one_process(world: int, n_train: int, tmp_path: Path) -> None:
    """33 training samples in batches of 8 on 2 gloo processes (a last batch of 1), 34 on 3 (of 2): the
    run finishes and its metrics rows and weights are a single process's up to float error."""
    store = train_store(tmp_path / "train.h5", n_train)
    single = _one_epoch(str(store), DistInfo())
    ranks = run_ddp(world, store, tmp_path)
    for result in ranks:
        assert result["error"] is None
        for got, want in zip(result["rows"], single["rows"]):
            assert {k: v for k, v in got.items() if k != "seconds"} == pytest.approx(
                {k: v for k, v in want.items() if k != "seconds"}, rel=1e-5, abs=1e-6)
        for name, weight in single["state"].items():
            torch.testing.assert_close(result["state"][name], weight, rtol=1e-5, atol=1e-6)


def test_a_nan_on_one_rank_stops_every_rank_with_the_same_sentence(tmp_path: Path) -> None:
    """A NaN feature reaches one rank's loss only; the flag travels in the epoch's all-reduce, so both
    ranks stop after that epoch with the same message naming the first bad batch."""
    store = train_store(tmp_path / "nan.h5", 33, nan_sample=5)
    errors = [r["error"] for r in run_ddp(2, store, tmp_path)]
    assert errors[0] is not None and errors[0] == errors[1]
    assert "epoch 1, batch" in errors[0] and "NaN or infinite" in errors[0]
    assert errors[0] == _one_epoch(str(store), DistInfo())["error"]

"""EpochBatches: the global batches of an epoch, split across ranks, optionally length-bucketed."""

from __future__ import annotations

import numpy as np
import torch

from kebr_core.distributed import DistInfo, EpochBatches, global_mean


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

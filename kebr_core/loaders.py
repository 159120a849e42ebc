"""DataLoaders whose worker processes live for a whole run (docs/design.md §6).

A DataLoader with workers starts them on every `iter()`: a new loader per epoch and per validation pass
paid that start (180–220 ms on the development machine) each time, against well under a second for a
MOSI epoch on a GPU. `RunLoaders` keeps one loader per dataset for the run instead, with persistent
workers: the training loader's batches change every epoch (`EpochBatches` of that epoch, handed to the
loader's `batch_sampler` before each pass), the evaluation loaders' never do. The workers only read and
collate (no random draw), so a persistent worker yields exactly what a fresh one would. A fresh loader
also draws its workers' base seed from the global random stream on every pass; a kept one draws that
number all the same (`_draw`), so the dropout that follows, and hence a run, is the same with 0 workers,
with persistent ones, and after a resume.

A dataset that is a new object (pretraining with the random word redrawn per epoch builds new texts each
epoch) gets a new loader, and its workers, then. Without workers (the CPU default) nothing is kept.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset


class CurrentBatches(Sampler[list[int]]):
    """A `batch_sampler` whose batches are swapped between passes (`batches`: this epoch's `EpochBatches`)."""

    def __init__(self) -> None:
        self.batches: Sampler[list[int]] | None = None

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches or [])

    def __len__(self) -> int:
        return len(self.batches) if self.batches is not None else 0  # type: ignore[arg-type]


class RunLoaders:
    """The DataLoaders of one run: one per (role, dataset), each starting its `workers` processes once.

    `train(dataset, collate, batches)` for a training epoch, `evaluation(dataset, collate, batch_size, indices)`
    for a pass over a split in order. `close()` (or the `with` block's end) stops every worker."""

    def __init__(self, workers: int, device: torch.device):
        self.workers, self.pin = workers, device.type == "cuda"
        self._loaders: dict[str, tuple[Dataset, Callable, DataLoader, CurrentBatches | None]] = {}
        self._seed = 0

    def train(self, dataset: Dataset, collate: Callable, batches: Sampler[list[int]]) -> DataLoader:
        self._draw()
        kept = self._kept("train", dataset, collate)
        if kept is None:
            current = CurrentBatches()
            kept = self._keep("train", dataset, collate, current,
                              dict(batch_sampler=current, pin_memory=self.pin))
        kept[3].batches = batches  # type: ignore[union-attr]
        return kept[2]

    def evaluation(self, dataset: Dataset, collate: Callable, batch_size: int, indices: list[int]) -> DataLoader:
        """Samples `indices` of `dataset` in order (this rank's slice, `distributed.rank_slice`: the same on every pass of a run)."""
        self._draw()
        role = f"evaluation {id(dataset)}"  # the dataset is kept with its loader, so its id stays its own
        kept = self._kept(role, dataset, collate)
        if kept is None:
            kept = self._keep(role, dataset, collate, None, dict(batch_size=batch_size, shuffle=False),
                              Subset(dataset, indices))
        return kept[2]

    def _draw(self) -> None:
        """The global-stream draw a fresh loader's pass makes (its workers' base seed), made here when the
        pass reuses a kept loader, whose own draws come from its private generator."""
        if self.workers > 0:
            self._seed = int(torch.empty((), dtype=torch.int64).random_().item())

    def _kept(self, role: str, dataset: Dataset, collate: Callable):
        kept = self._loaders.get(role)
        if kept is not None and (kept[0] is not dataset or kept[1] is not collate):
            self._stop(role)
            kept = None
        return kept

    def _keep(self, role: str, dataset: Dataset, collate: Callable, current: CurrentBatches | None, options: dict,
              part: Dataset | None = None):
        if self.workers == 0:  # nothing to keep: a pass without workers starts nothing (and draws as always)
            return dataset, collate, DataLoader(dataset if part is None else part, collate_fn=collate, **options), current
        private = torch.Generator().manual_seed(self._seed)
        loader = DataLoader(dataset if part is None else part, collate_fn=collate, num_workers=self.workers,
                            persistent_workers=True, generator=private, **options)
        self._loaders[role] = (dataset, collate, loader, current)
        return self._loaders[role]

    def _stop(self, role: str) -> None:
        _, _, loader, _ = self._loaders.pop(role)
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def close(self) -> None:
        for role in list(self._loaders):
            self._stop(role)

    def __enter__(self) -> "RunLoaders":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""A KebrError raised inside a DataLoader worker process (a damaged sample met while training with
workers > 0, the default on CUDA) reaches the user as its one sentence, not as the worker's traceback."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from kebr_core.errors import EveryRankError, KebrError

SENTENCE = "Store x.h5 is damaged: audio/data of sample 3 ('s003') cannot be read (bad chunk)."


class Damaged(Dataset):
    def __init__(self, error: type[Exception]) -> None:
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 3:
            try:  # a chained one too: torch formats both tracebacks; the raised one is the last
                raise ValueError("h5py: chunk 7 is not readable")
            except ValueError:
                raise self.error(SENTENCE)
        return torch.zeros(1)


@pytest.mark.parametrize("error", [KebrError, EveryRankError])
def test_a_kebr_error_in_a_worker_process_keeps_its_sentence(error: type[KebrError]) -> None:
    loader = DataLoader(Damaged(error), batch_size=2, num_workers=1)
    with pytest.raises(error) as caught:
        list(loader)
    assert str(caught.value) == SENTENCE  # torch's own message would begin "Caught KebrError in DataLoader worker"


def test_a_sentence_that_merely_mentions_a_worker_is_kept_whole() -> None:
    text = "Caught in the act: the store x.h5 is not a store."
    assert str(KebrError(text)) == text and str(KebrError("a", "b")) == "('a', 'b')"

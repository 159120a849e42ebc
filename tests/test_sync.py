"""No host-device synchronisation inside a training step, counted on the CPU: every way Python code
reads a tensor's value on the host (`.item()`, `float()`, `bool()`, `.tolist()`, `.cpu()`, …) is
wrapped and its call site recorded while a real epoch runs (frozen and fine-tuned encoder). On a GPU
each of those waits for the device; `bench/gpu.sh` checks the same step under
`torch.cuda.set_sync_debug_mode("error")` (tests/test_gpu.py)."""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch

from kebr_core.config import RunConfig
from kebr_core.data.dataset import Collator, StoreDataset
from kebr_core.distributed import DistInfo
from kebr_core.masking import tokenize_plain
from kebr_core.model import KEBRModel
from kebr_core.text_encoder import load_tokenizer
from kebr_core.training import build_text_cache, seed_everything, train_epoch
from tests.conftest import TINY_BERT, write_tiny_store

HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
# Host-side code that reads CPU tensors by design: data loading and collation run before the batch
# goes to the device, Adam's step counters live on the CPU (capturable=False), and EpochBatches
# draws the epoch's batches with a CPU generator.
HOST_SIDE = ("/torch/utils/data/", "/kebr_core/data/", "/torch/optim/")
HOST_SIDE_FUNCTIONS = {("distributed.py", "__init__")}


def record_host_reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Wrap the tensor methods that read values on the host; count them by (file, function) of the
    innermost caller outside torch's own tensor code, leaving out host-side data loading."""
    sites: Counter = Counter()
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, __original=original, **kwargs):
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/_tensor.py" not in f.filename]
            caller = frames[-1]
            site = (Path(caller.filename).name, caller.name)
            if not any(part in caller.filename for part in HOST_SIDE) and site not in HOST_SIDE_FUNCTIONS:
                sites[site] += 1
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return sites


def run_epoch(store: Path, unfreeze: bool, n_train: int) -> RunConfig:
    cfg = RunConfig()
    cfg.model.text_model, cfg.model.head_hidden, cfg.model.d_audio, cfg.model.d_vision = TINY_BERT, 16, 7, 5
    cfg.train.batch_size, cfg.train.workers, cfg.train.unfreeze = 4, 0, unfreeze
    seed_everything(0)
    tokenizer = load_tokenizer(TINY_BERT)
    plain = StoreDataset(store, "train")
    token_ids = tokenize_plain(plain.store.texts, tokenizer, cfg.model.max_text_len)
    dataset = torch.utils.data.Subset(
        StoreDataset(store, "train", text_encoder=lambda texts: [{"input_ids": token_ids[i]} for i in plain.indices]),
        list(range(n_train)))
    model = KEBRModel(cfg.model, cfg.mcc)
    model.set_encoder_trainable(unfreeze)
    cache = None if unfreeze else build_text_cache(model.encoder, token_ids, torch.device("cpu"))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return lambda: train_epoch(model, dataset, Collator(), cache, opt, cfg, torch.device("cpu"), 1, task="finetune",
                               frozen=not unfreeze, info=DistInfo(), seed=0)


@pytest.mark.parametrize("unfreeze", [False, True], ids=["frozen", "fine-tuned encoder"])
def test_training_steps_never_read_the_device(unfreeze: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch of 2 steps and one of 6 read values on the host at the same sites the same number of
    times: once at the epoch's end (the metrics and the non-finite flags), never per step."""
    store = write_tiny_store(tmp_path / "s.h5", n=60)  # 36 training samples
    short, long = run_epoch(store, unfreeze, n_train=8), run_epoch(store, unfreeze, n_train=24)
    sites = record_host_reads(monkeypatch)
    short()
    per_short_epoch = Counter(sites)
    sites.clear()
    long()
    assert sites == per_short_epoch
    assert sum(sites.values()) <= 3 and all(file == "training.py" for file, _ in sites)


def test_the_counter_sees_a_per_step_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe itself: a `float(loss)` per step (as the step once did) is counted once per step."""
    import kebr_core.distributed as distributed

    store = write_tiny_store(tmp_path / "s.h5", n=60)
    epoch = run_epoch(store, unfreeze=False, n_train=24)
    original = distributed.global_mean

    def global_mean_with_a_read(per_sample, weight, info):
        value = original(per_sample, weight, info)
        float(value.detach())
        return value

    monkeypatch.setattr(distributed, "global_mean", global_mean_with_a_read)
    sites = record_host_reads(monkeypatch)
    epoch()
    assert sites[("test_sync.py", "global_mean_with_a_read")] == 2 * 6  # two means per step, 6 steps


def test_dataloader_workers_default_to_some_on_cuda_and_none_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """`train.workers` None (auto): HDF5 reads overlap the GPU's compute with up to 4 workers per process,
    fewer when torchrun puts many processes on the machine; the CPU keeps its cores for the model."""
    from kebr_core.training import loader_workers

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))  # the CPUs this process may use
    assert loader_workers(None, cpu) == 0 and loader_workers(3, cpu) == 3 and loader_workers(0, cuda) == 0
    assert loader_workers(None, cuda) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert loader_workers(None, cuda) == 1

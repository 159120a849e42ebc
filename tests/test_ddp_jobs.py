"""Many processes, the jobs around them and the launcher (issue 29), on the CPU with gloo: sharded ablations
under DDP, one writer per job, the authors' alignment refused on several ranks, persistent DataLoader
workers, an unfrozen encoder under DDP, and the launcher's edges (SLURM's node number, too many processes
for the GPUs, a refusal on rank 0, Ctrl-C)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kebr_cli.launcher import torchrun_arguments
from kebr_cli.main import app
from kebr_core import results_files, runs
from kebr_core.distributed import CONSTANT_BUFFERS, DistInfo, init_distributed
from kebr_core.errors import EveryRankError
from tests.conftest import TINY_BERT
from tests.test_distributed import run_ddp, tiny_fine_tuning, train_store

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8", "--device", "cpu", "--dropout", "0"]
REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
           PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))

# Loaded first by every Python process of a job (sitecustomize): notes which rank writes which kebr file.
WRITE_COUNTER = '''
import os
if os.environ.get("KEBR_WRITES_LOG"):
    import kebr_core.io as kio

    def _note(path):
        with open(os.environ["KEBR_WRITES_LOG"], "a") as f:
            f.write(f"{os.environ.get('RANK', '-')} {os.path.basename(str(path))}\\n")

    _open, _atomic = kio.open_for_writing, kio.atomic_write_text
    kio.open_for_writing = lambda path, *a, **k: (_note(path), _open(path, *a, **k))[1]
    kio.atomic_write_text = lambda path, text, **k: (_note(path), _atomic(path, text, **k))[1]
'''


def kebr(*args: str, env: dict | None = None, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kebr_cli", *args], env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)


# ───────────────────────── sharded ablations under DDP; one writer ─────────────────────────


def test_two_sharded_ddp_ablations_at_once_agree_and_rank_0_alone_writes(tiny_store: Path, tmp_path: Path) -> None:
    """Two `--shard i/2 --nproc-per-node 2` jobs of one ablation (C1 and C4) start at once. Each job's rank 0
    takes the pretraining lock and decides for its ranks (before the fix rank 1 went on into `pretrain` alone
    while rank 0 waited). Since the g-sweep reuses C1 as its point at C1's g, no two configurations of one
    ablation share a pretraining, so here each shard trains its own, once. Both finish; collected under DDP, the ablation equals a one-process
    one-shot ablation, its files and the results table are written by rank 0 only, and --json prints one
    document."""
    common = ["ablate", "-d", str(tiny_store), "--no-mcc", "--pretrain-epochs", "1", "--epochs",
              "1", "--seeds", "1", *FAST]
    sharded, one = tmp_path / "sharded", tmp_path / "one"
    jobs = [subprocess.Popen([sys.executable, "-m", "kebr_cli", *common, "-o", str(sharded), "--shard", f"{i}/2",
                              "--nproc-per-node", "2"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
    try:
        for job in jobs:
            _, err = job.communicate(timeout=600)
            assert job.returncode == 0, err
            assert "does not see" not in err and "Traceback" not in err
    finally:
        for job in jobs:
            job.kill()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(WRITE_COUNTER)
    log = tmp_path / "writes.log"
    env = dict(ENV, KEBR_WRITES_LOG=str(log), PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), ENV["PYTHONPATH"]]))
    collected = kebr(*common, "-o", str(sharded), "--collect", "--nproc-per-node", "2", "--json", env=env)
    assert collected.returncode == 0, collected.stderr
    document = json.loads(collected.stdout)  # one document, not one per rank
    writers: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        rank, name = line.split(" ", 1)
        writers.setdefault(name, set()).add(rank)
    for name in (runs.ABLATION_JSON, runs.RESULTS_CSV, runs.RESULTS_TABLE):
        assert writers.get(name) == {"0"}, (name, writers)
    # Each configuration fine-tuned from its own pretraining, trained once (one epoch, one metrics row).
    used = {json.loads((sharded / r["eval_dir"] / runs.CONFIG).read_text())["checkpoint_sha256"]
            for r in document["configurations"]}
    assert len(used) == 2
    pretrained = sharded / document["configurations"][0]["pretrain_dir"]
    assert len((pretrained / runs.METRICS).read_text().splitlines()) == 2
    assert kebr(*common, "-o", str(one)).returncode == 0
    want = json.loads((one / runs.ABLATION_JSON).read_text())["configurations"]
    assert [r["name"] for r in document["configurations"]] == [r["name"] for r in want] == ["C1", "C4"]
    # The pretraining (frozen encoder, no dropout) is one process's up to float error; fine-tuning trains the
    # encoder, whose dropout draws are per rank, so the test metrics agree only closely.
    rows = [(one / want[0]["pretrain_dir"] / runs.METRICS).read_text().splitlines(),
            (pretrained / runs.METRICS).read_text().splitlines()]
    header = rows[0][0].split(",")
    for name, a, b in zip(header, rows[0][1].split(","), rows[1][1].split(",")):
        if name != "seconds":
            assert float(a) == pytest.approx(float(b), rel=1e-4, abs=1e-5), name
    for got, expected in zip(document["configurations"], want):
        assert got["mean"] == pytest.approx(expected["mean"], rel=2e-2, abs=2e-2)


def _update_table_many_times(path: str, who: int, times: int) -> None:
    for k in range(times):
        results_files.update_results_table(Path(path), [results_files.ResultsRow("KEBR", f"d{who}", Path(f"run-{who}-{k}"), [0],
                                                                                 {"mae": (1.0, 0.0)})])


def test_concurrent_results_table_writers_lose_no_row(tmp_path: Path) -> None:
    """Two processes add 60 rows each to one results table at once: none fails (before: FileNotFoundError
    when one renamed the other's fixed .tmp name) and every row is there."""
    table = tmp_path / runs.RESULTS_TABLE
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_update_table_many_times, args=(str(table), who, 60)) for who in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = table.read_text().splitlines()
    assert len(lines) == 1 + 120
    assert not list(tmp_path.glob("*.tmp"))


# ───────────────────────── the authors' alignment; a refusal on rank 0 ─────────────────────────


def test_authors_alignment_on_two_processes_is_refused_in_one_sentence(tiny_store: Path, tmp_path: Path) -> None:
    r = kebr("pretrain", str(tiny_store), "-o", str(tmp_path / "p"), *FAST, "--mcc-align", "authors", "--epochs", "1",
             "--nproc-per-node", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("--mcc-align authors cannot run on several processes") == 1, r.stderr
    assert not (tmp_path / "p" / runs.METRICS).exists()


def test_a_folder_rank_0_refuses_stops_every_rank_at_once(tiny_store: Path, tmp_path: Path) -> None:
    """The run folder holds another run: rank 0 refuses it in `prepare_run_dir`, and rank 1 stops with it
    instead of waiting in a barrier for the process group's timeout (30 minutes on gloo)."""
    out = tmp_path / "p"
    assert runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(out), *FAST, "--epochs", "1"]).exit_code == 0
    start = time.monotonic()
    r = kebr("pretrain", str(tiny_store), "-o", str(out), *FAST, "--epochs", "1", "--g", "0.1", "--nproc-per-node", "2",
             timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr and time.monotonic() - start < 200
    assert r.stderr.count("error:") == 1 and "--force" in r.stderr, r.stderr


# ───────────────────────── persistent workers; an unfrozen encoder under DDP ─────────────────────────


def test_loader_workers_start_once_per_run(tiny_store: Path, tmp_path: Path, monkeypatch) -> None:
    """3 epochs × 2 seeds with one loader worker: the workers of the training, validation and test loaders
    start once each for the whole run (before: every epoch and every validation pass, 14 starts), and the
    results are those of the run without workers."""
    from torch.utils.data import dataloader

    starts = []
    init = dataloader._MultiProcessingDataLoaderIter.__init__

    def counting(self, loader):
        starts.append(loader.num_workers)
        init(self, loader)

    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "__init__", counting)
    # As in CI: the machine looks quiet for one run and oversubscribed for the other (the thread rule's inputs);
    # the results must not follow the load (the suite's pin, `one_thread_for_kebr_commands`).
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    common = ["eval", "-d", str(tiny_store), *FAST, "--epochs", "3", "--seeds", "2"]
    r = runner.invoke(app, [*common, "-o", str(tmp_path / "workers"), "--loader-workers", "1"])
    assert r.exit_code == 0, r.output
    assert starts == [1, 1, 1]
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    assert runner.invoke(app, [*common, "-o", str(tmp_path / "none"), "--loader-workers", "0"]).exit_code == 0
    got, want = (json.loads((tmp_path / name / runs.RESULTS_JSON).read_text()) for name in ("workers", "none"))
    assert got["per_seed"] == want["per_seed"]


def test_loader_workers_count_the_cpus_this_process_may_use(monkeypatch) -> None:
    from kebr_core.training import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})  # e.g. SLURM's --cpus-per-task 3
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_workers(None, torch.device("cuda")) == 2
    assert loader_workers(None, torch.device("cpu")) == 0 and loader_workers(3, torch.device("cpu")) == 3


def test_the_model_has_only_constant_buffers() -> None:
    """DDP leaves buffers unbroadcast (`data_parallel`): safe only while no buffer changes in training."""
    from kebr_core.config import RunConfig
    from kebr_core.model import KEBRModel

    cfg = RunConfig()
    cfg.model.text_model, cfg.model.d_audio, cfg.model.d_vision = TINY_BERT, 7, 5
    names = [name for name, _ in KEBRModel(cfg.model, cfg.mcc).named_buffers()]
    assert names and all(name.rsplit(".", 1)[-1] in CONSTANT_BUFFERS for name in names)


def _unfrozen_epochs(store: str, info: DistInfo) -> dict:
    """Two fine-tuning epochs of a tiny model with its text encoder trained (no cache), dropout off."""
    from kebr_core.data.dataset import Collator
    from kebr_core.distributed import data_parallel
    from kebr_core.training import train_epoch

    cfg, dataset, _, model = tiny_fine_tuning(store)
    model.set_encoder_trainable(True)
    model.pretrain_head.requires_grad_(False)
    for module in model.modules():  # the encoder's dropout draws differ per rank: off, so 2 ranks can equal 1
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_prob"):
            module.dropout_prob = 0.0
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    net = data_parallel(model, info)
    rows = [train_epoch(net, dataset, Collator(), None, opt, cfg, torch.device("cpu"), epoch, task="finetune",
                        frozen=False, info=info, seed=0) for epoch in (1, 2)]
    return {"rows": rows, "state": {k: v.clone() for k, v in model.state_dict().items()}, "initial": initial}


def test_ddp_with_the_encoder_trained_matches_one_process(tmp_path: Path) -> None:
    """The text encoder's gradients go through DDP's all-reduce too (every earlier DDP test froze it): 33
    samples in batches of 8 on 2 processes, the metrics rows and every weight, encoder included, are one
    process's up to float error."""
    store = train_store(tmp_path / "train.h5", 33)
    single = _unfrozen_epochs(str(store), DistInfo())
    for result in run_ddp(2, store, tmp_path, _unfrozen_epochs):
        for got, want in zip(result["rows"], single["rows"]):
            assert {k: v for k, v in got.items() if k != "seconds"} == pytest.approx(
                {k: v for k, v in want.items() if k != "seconds"}, rel=1e-5, abs=1e-6)
        for name, weight in single["state"].items():
            torch.testing.assert_close(result["state"][name], weight, rtol=1e-4, atol=1e-5)
    trained = [k for k, v in single["initial"].items() if not torch.equal(v, single["state"][k])]
    assert any(k.startswith("encoder.") for k in trained)  # the encoder did train, and ranks agree on it


# ───────────────────────── the launcher ─────────────────────────


def test_the_node_rank_comes_from_slurm_unless_given(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_NODEID", "1")
    assert "--node-rank=1" in torchrun_arguments(4, 2, None, master_addr="10.0.0.1")
    assert "--node-rank=0" in torchrun_arguments(4, 2, 0, master_addr="10.0.0.1")
    monkeypatch.setenv("SLURM_NODEID", "x")
    with pytest.raises(Exception, match="SLURM_NODEID"):
        torchrun_arguments(4, 2, None, master_addr="10.0.0.1")
    monkeypatch.delenv("SLURM_NODEID")
    assert "--node-rank=0" in torchrun_arguments(4, 2, None, master_addr="10.0.0.1")


def test_more_processes_than_gpus_is_one_sentence_on_every_rank(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(EveryRankError, match=r"--nproc-per-node 2 asks for one GPU per process, but this machine has 1"):
        init_distributed(torch.device("cuda"))


def test_ctrl_c_under_torchrun_prints_one_message_and_no_traceback(tiny_store: Path, tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group (the kebr launcher, torchrun, every rank): one "interrupted"
    line with the command that continues, exit 130, no traceback from torchrun or any rank."""
    out = tmp_path / "p"
    p = subprocess.Popen([sys.executable, "-m", "kebr_cli", "pretrain", str(tiny_store), "-o", str(out), *FAST,
                          "--epochs", "500", "--nproc-per-node", "2"], env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for _ in range(600):
            time.sleep(0.5)
            if (out / runs.METRICS).is_file() and len((out / runs.METRICS).read_text().splitlines()) > 2:
                break
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert err.count("interrupted") == 1 and "--resume" in err and "Traceback" not in err, err

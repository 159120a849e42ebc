"""Mid-epoch checkpoints and exact resume (kebr_core.resume): --checkpoint-every-steps/-minutes, a kill -9,
SIGTERM or Ctrl-C inside an epoch, then --resume gives the uninterrupted run bit for bit (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kebr_core import checkpoints, runs
from kebr_core.errors import KebrError
from kebr_core.recipes.pretrain import pretrain
from tests.conftest import TINY_BERT, write_tiny_store
from tests.test_recipes import rows, small_cfg

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
           PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
STEPS = 8  # the tiny store's 60 samples in batches of 8


def cfg(every_steps: int = 0, epochs: int = 3, **train):
    c = small_cfg(epochs=epochs)
    c.train.checkpoint_every_steps = every_steps
    for k, v in train.items():
        setattr(c.train, k, v)
    return c


def same_run(a: Path, b: Path) -> None:
    """The final weights bit for bit, and every metrics row but the seconds."""
    wa, wb = load_file(str(a / runs.FINAL / runs.WEIGHTS)), load_file(str(b / runs.FINAL / runs.WEIGHTS))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k].view(-1).view(torch.uint8), wb[k].view(-1).view(torch.uint8)), k
    assert rows(a / runs.METRICS) == rows(b / runs.METRICS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Bit for bit holds at one thread count: the child processes get OMP_NUM_THREADS=1 (ENV), so the runs
    in this process use one thread too (without it, CI's two threads here against one there differed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_tiny_store(tmp_path_factory.mktemp("store") / "tiny.h5")


@pytest.fixture(scope="module")
def full(store, tmp_path_factory) -> Path:
    """The uninterrupted run (3 epochs of 8 steps)."""
    out = tmp_path_factory.mktemp("full") / "run"
    pretrain(store, out, cfg())
    return out


def checkpoint_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / runs.CHECKPOINTS).iterdir() if p.name != runs.LATEST)


@pytest.mark.parametrize("epoch, step", [(1, 1), (2, 3), (3, 5)])
def test_ctrl_c_inside_an_epoch_saves_that_step_and_resumes_bit_for_bit(store, full, tmp_path, epoch, step):
    """SIGINT sent during step `step` of `epoch` (the step finishes first: `held_steps`), no step cadence."""

    def ctrl_c(stage, done, total, info):
        if stage == "batch" and info["epoch"] == epoch and done == step:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        pretrain(store, tmp_path / "run", cfg(), progress=ctrl_c)
    latest = checkpoints.latest_checkpoint(tmp_path / "run")
    assert latest.name == f"epoch-{epoch:04d}-step-{step:08d}"
    state = checkpoints.load_trainer_state(latest)
    assert (state["epoch"], state["step"]) == (epoch, step)
    pretrain(store, tmp_path / "run", cfg(), resume=True)
    same_run(full, tmp_path / "run")


def test_every_n_steps_keeps_only_the_latest_mid_epoch_checkpoint(store, full, tmp_path):
    seen = []

    def look(stage, done, total, info):
        if stage == "batch":
            seen.append((info["epoch"], done, checkpoint_names(tmp_path / "run") if (tmp_path / "run" / runs.CHECKPOINTS).is_dir() else []))

    pretrain(store, tmp_path / "run", cfg(every_steps=2), progress=look)
    assert seen[1] == (1, 2, ["epoch-0001-step-00000002"])
    assert seen[3] == (1, 4, ["epoch-0001-step-00000004"])  # the older one superseded
    assert seen[8] == (2, 1, ["epoch-0001-step-00000006"])  # epoch 1's end is not due (checkpoint_every 2) ...
    assert seen[9] == (2, 2, ["epoch-0002-step-00000002"])
    assert checkpoint_names(tmp_path / "run") == ["epoch-0002", "epoch-0003"]
    same_run(full, tmp_path / "run")  # checkpoints change nothing the run computes


def test_every_m_minutes(store, tmp_path):
    """A tiny interval: a checkpoint after each step inside an epoch (none at an epoch's last step)."""
    saved = []

    def look(stage, done, total, info):
        if stage == "batch":
            latest = checkpoints.latest_checkpoint(tmp_path / "run")
            saved.append(latest.name if latest else None)

    pretrain(store, tmp_path / "run", cfg(epochs=1, checkpoint_every_minutes=1e-9), progress=look)
    assert saved == [f"epoch-0001-step-{s:08d}" for s in range(1, STEPS)] + [f"epoch-0001-step-{STEPS - 1:08d}"]


def test_checkpoint_options_do_not_change_the_run_identity(store, full, tmp_path):
    """Resumed with other cadences (operational keys): accepted, and the same run."""

    def stop(stage, done, total, info):
        if stage == "batch" and info["epoch"] == 2 and done == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        pretrain(store, tmp_path / "run", cfg(every_steps=3), progress=stop)
    pretrain(store, tmp_path / "run", cfg(every_steps=0, checkpoint_every_minutes=5.0), resume=True)
    same_run(full, tmp_path / "run")


def test_per_epoch_random_word_and_disk_cache_resume_bit_for_bit(store, tmp_path):
    """The random word redrawn every epoch (the cache's redrawn rows) and the text cache on disk, reused
    by the resumed run; the disk cache gives the in-memory run's numbers."""
    memory = tmp_path / "memory"
    pretrain(store, memory, cfg(random_word="per-epoch", text_cache="memory"))

    def stop(stage, done, total, info):
        if stage == "batch" and info["epoch"] == 2 and done == 2:
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "disk"
    with pytest.raises(KeyboardInterrupt):
        pretrain(store, run, cfg(random_word="per-epoch", text_cache="disk"), progress=stop)
    built = list((run / runs.TEXT_CACHE).iterdir())
    assert len(built) == 1
    stamp = (built[0] / "states.npy").stat().st_mtime_ns
    pretrain(store, run, cfg(random_word="per-epoch", text_cache="disk"), resume=True)
    assert (built[0] / "states.npy").stat().st_mtime_ns == stamp  # built once
    same_run(memory, run)


def test_a_mid_epoch_state_that_does_not_match_its_folder_is_refused(store, tmp_path):
    def stop(stage, done, total, info):
        if stage == "batch" and info["epoch"] == 1 and done == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        pretrain(store, tmp_path / "run", cfg(), progress=stop)
    folder = checkpoints.latest_checkpoint(tmp_path / "run")
    state = torch.load(folder / runs.TRAINER_STATE, weights_only=True)
    for broken, match in ((state | {"step": 3}, "does not match its folder"),
                          ({k: v for k, v in state.items() if k != "position"}, "without its position")):
        torch.save(broken, folder / runs.TRAINER_STATE)
        before = (tmp_path / "run" / runs.METRICS).read_bytes() if (tmp_path / "run" / runs.METRICS).exists() else None
        with pytest.raises(KebrError, match=match):
            pretrain(store, tmp_path / "run", cfg(), resume=True)
        after = (tmp_path / "run" / runs.METRICS).read_bytes() if (tmp_path / "run" / runs.METRICS).exists() else None
        assert before == after  # refused before anything was written


# ───────────────────────── a real process killed: kill -9 and SIGTERM ─────────────────────────

KILLED_RUN = r"""
import os, signal, sys
from pathlib import Path
from kebr_cli.app import stop_on_sigterm
from kebr_core.recipes.pretrain import pretrain
from tests.test_midepoch import cfg
store, out, how, epoch, step, every = sys.argv[1], Path(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:7])
stop_on_sigterm()  # as the CLI does
def kill(stage, done, total, info):
    if stage == "batch" and info["epoch"] == epoch and done == step:
        os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGTERM)
try:
    pretrain(store, out, cfg(every_steps=every), progress=kill)
except KeyboardInterrupt as e:
    sys.exit(130 if e.args == ("SIGTERM",) else 3)
"""


@pytest.mark.parametrize("how, epoch, step, expected", [
    ("kill", 1, 5, "epoch-0001-step-00000004"),  # kill -9: the last checkpoint written (every 2 steps)
    ("kill", 2, 1, "epoch-0001-step-00000006"),  # epoch 1's end is not due (every 2 epochs): still its step 6
    ("kill", 3, 4, "epoch-0003-step-00000004"),  # killed right after saving step 4 of epoch 3
    ("term", 1, 3, "epoch-0001-step-00000003"),  # SIGTERM: the step it came in, saved
    ("term", 2, 8, "epoch-0002-step-00000006"),  # epoch 2's last step: not saved (the epoch ends are the
    # recipe's), and epoch 1's end, in memory, is older than the step-6 checkpoint: nothing older is saved
])
def test_killed_process_resumes_bit_for_bit(store, full, tmp_path, how, epoch, step, expected):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(store), str(out), how, str(epoch), str(step), "2"],
                          env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == (-signal.SIGKILL if how == "kill" else 130), proc.stderr
    assert checkpoints.latest_checkpoint(out).name == expected
    pretrain(store, out, cfg(every_steps=2), resume=True)
    same_run(full, out)


def test_cli_sigterm_inside_an_epoch_then_resume(store, tmp_path):
    """A real `kebr pretrain --checkpoint-every-steps 1` sent SIGTERM once a mid-epoch checkpoint exists:
    exit 130, the latest checkpoint is a step of an epoch, and the printed command continues to the
    uninterrupted run's weights, bit for bit."""
    out = tmp_path / "run"
    args = ["pretrain", str(store), "-o", str(out), "--epochs", "3", "--checkpoint-every", "2", "--text-model", TINY_BERT,
            "--batch-size", "8", "--device", "cpu", "--head-hidden", "16", "--checkpoint-every-steps", "1"]
    uninterrupted = ["pretrain", str(store), "-o", str(tmp_path / "full"), *args[4:]]
    r = subprocess.run([sys.executable, "-m", "kebr_cli", *uninterrupted], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    with subprocess.Popen([sys.executable, "-m", "kebr_cli", *args], env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 300  # until the first mid-epoch checkpoint exists
        while not (out / runs.CHECKPOINTS / runs.LATEST).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # (nothing, when it has ended: the exit code below says so)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "stopped by SIGTERM" in err, err
    latest = checkpoints.latest_checkpoint(out)
    # a step of an epoch, or (SIGTERM in an epoch's last step, or while the next loads) an epoch's end
    assert 0 < checkpoints.load_trainer_state(latest).get("step", 0) < 8 or latest.name in ("epoch-0001", "epoch-0002")
    r = subprocess.run([sys.executable, "-m", "kebr_cli", *args, "--resume"], env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    same_run(tmp_path / "full", out)


# ───────────────────────── under DDP: two gloo processes ─────────────────────────

DDP_RUN = r"""
import os, signal, sys
from pathlib import Path
from kebr_cli.app import stop_on_sigterm
from kebr_core.recipes.pretrain import pretrain
from tests.test_midepoch import cfg
store, out, epoch, step, resume = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
stop_on_sigterm()  # as the CLI does
def kill(stage, done, total, info):  # rank 0 dies (kill -9) once step `step` of epoch `epoch` is done
    if stage == "batch" and info["epoch"] == epoch and done == step and os.environ["RANK"] == "0":
        os.kill(os.getpid(), signal.SIGKILL)
pretrain(store, out, cfg(every_steps=2), progress=kill, resume=resume)
"""


def torchrun(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), *args], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_ddp_run_killed_inside_an_epoch_resumes_bit_for_bit(store, tmp_path):
    """Two gloo processes, a mid-epoch checkpoint every 2 steps; rank 0 is killed (-9) just after the one of
    epoch 2's step 2, torchrun ends the other. The checkpoint holds both ranks' random streams; resuming it
    with one process is refused in one sentence, with two it gives the uninterrupted DDP run bit for bit."""
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_RUN)
    full, out = tmp_path / "full", tmp_path / "run"
    r = torchrun(script, str(store), str(full), "0", "0", "0")
    assert r.returncode == 0, r.stderr
    r = torchrun(script, str(store), str(out), "2", "2", "0")
    assert r.returncode != 0
    latest = checkpoints.latest_checkpoint(out)
    assert latest.name == "epoch-0002-step-00000002", r.stderr
    assert len(checkpoints.load_trainer_state(latest)["position"]["rng"]) == 2
    with pytest.raises(KebrError, match=r"written by 2 process\(es\), not 1"):
        pretrain(store, out, cfg(every_steps=2), resume=True)
    r = torchrun(script, str(store), str(out), "0", "0", "1")
    assert r.returncode == 0, r.stderr
    same_run(full, out)


def test_a_position_gives_each_rank_its_own_sums_and_reads_the_older_summed_form():
    """(ranks, 7 + S) sums: rank r starts from row r. An older checkpoint's (7 + S,) sum of the ranks: rank 0
    starts from it and the others from zeros (the epoch's all-reduce adds it once). Rows ≠ ranks: refused."""
    from kebr_core.epoch_metrics import BALANCE_SUMS
    from kebr_core.resume import EpochPosition

    length = len(BALANCE_SUMS) + 3
    per_rank = torch.arange(2 * length, dtype=torch.float32).reshape(2, length)
    state = {"epoch": 2, "step": 1, "position": {"sums": per_rank, "rng": [{}, {}]}}
    pos = EpochPosition.from_state(state, "t")
    assert torch.equal(pos.sums_for(1, length, torch.device("cpu")), per_rank[1])
    older = EpochPosition.from_state({**state, "position": {"sums": per_rank.sum(0), "rng": [{}, {}]}}, "t")
    assert torch.equal(older.sums_for(0, length, torch.device("cpu")), per_rank.sum(0))
    assert not older.sums_for(1, length, torch.device("cpu")).any()
    with pytest.raises(KebrError, match="without its position"):
        EpochPosition.from_state({**state, "position": {"sums": per_rank, "rng": [{}]}}, "t")

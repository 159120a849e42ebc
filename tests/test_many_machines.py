"""Beyond one machine (issue 19): kebr's torchrun launcher on several nodes, the check that every node sees the
same store, settings and output folder, and seed / configuration shards that aggregate to a one-shot run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kebr_cli.app import without_options
from kebr_cli.launcher import torchrun_arguments
from kebr_cli.main import app
from kebr_core.distributed import NONCE_PREFIX, SHARED_FOLDER, DistInfo, check_nodes_agree
from kebr_core.errors import KebrError
from kebr_core.shards import in_part
from tests.conftest import TINY_BERT

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8", "--device", "cpu", "--dropout", "0"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
           PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))


# ───────────────────────── the launcher's torchrun options ─────────────────────────


def test_one_machine_is_standalone_and_several_name_their_rendezvous() -> None:
    assert torchrun_arguments(2) == ["--standalone"]
    assert torchrun_arguments(1, 2, 1, rdzv_endpoint="node0:29400") == [
        "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400", "--rdzv-id=kebr"]
    assert torchrun_arguments(4, 3, 2, master_addr="10.0.0.1", master_port=1234) == [
        "--nnodes=3", "--node-rank=2", "--master-addr=10.0.0.1", "--master-port=1234"]
    # one node with an endpoint still meets there (e.g. a SLURM job of one node)
    assert "--standalone" not in torchrun_arguments(1, 1, 0, rdzv_endpoint="h:1")


@pytest.mark.parametrize("args, message", [
    ((1, 2, 0), "needs to know where the nodes meet"),
    ((1, 2, 2, "h:1"), "--node-rank 2 is out of range"),
    ((1, 2, 0, "h:1", "h"), "give one of them"),
    ((1, 2, 0, "node0"), "must be HOST:PORT"),
])
def test_launch_options_that_cannot_work_are_one_sentence(args: tuple, message: str) -> None:
    with pytest.raises(KebrError, match=message):
        torchrun_arguments(*args)


def test_the_command_torchrun_starts_has_none_of_the_launchers_options() -> None:
    argv = ["eval", "-d", "x.h5", "--nnodes", "2", "--rdzv-endpoint=h:1", "--node-rank", "1", "--seeds", "3"]
    assert without_options(argv, ("--nnodes", "--rdzv-endpoint", "--node-rank")) == ["eval", "-d", "x.h5", "--seeds", "3"]


def test_a_bad_launch_exits_1_with_one_sentence(tiny_store: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(tmp_path / "p"), "--nnodes", "2", *FAST])
    assert r.exit_code == 1 and "--rdzv-endpoint" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "p").exists()


def share(items, shard):  # what the recipes keep of their seeds / configurations
    return [item for k, item in enumerate(items) if in_part(k, shard)]


def test_shares_take_every_nth_item() -> None:
    seeds = [1111, 1112, 1113, 1114, 1115]
    assert share(seeds, (0, 2)) == [1111, 1113, 1115] and share(seeds, (1, 2)) == [1112, 1114]
    assert sorted(share(seeds, (0, 3)) + share(seeds, (1, 3)) + share(seeds, (2, 3))) == seeds
    assert share(seeds, None) == seeds


# ───────────────────────── every node sees the same store, settings, folder ─────────────────────────


def _agree_worker(rank: int, init_file: str, store: str, folders: list[str], settings: list[dict], out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        check_nodes_agree(DistInfo(rank=rank, world=2), folders[rank], store, settings[rank])
        error = None
    except KebrError as e:
        error = str(e)
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(error))


def _agree(tmp_path: Path, store: Path, folders: list[Path], settings: list[dict], name: str) -> list[str | None]:
    import torch.multiprocessing as mp

    out = tmp_path / name
    out.mkdir()
    mp.spawn(_agree_worker, args=(str(out / "init"), str(store), [str(f) for f in folders], settings, str(out)),
             nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_every_rank_stops_with_one_sentence_unless_all_see_the_same_folder_and_settings(tiny_store: Path,
                                                                                        tmp_path: Path) -> None:
    from kebr_core.config import RunConfig

    cfg = RunConfig().to_dict()
    shared = tmp_path / "run"
    assert _agree(tmp_path, tiny_store, [shared, shared], [cfg, cfg], "same") == [None, None]
    assert list(shared.iterdir()) == []  # the nonce is gone: it is no run output
    errors = _agree(tmp_path, tiny_store, [tmp_path / "node0", tmp_path / "node1"], [cfg, cfg], "two-folders")
    assert errors[0] == errors[1] and SHARED_FOLDER in errors[0] and str(tmp_path / "node1") in errors[0]
    assert not any(p.name.startswith(NONCE_PREFIX) for p in (tmp_path / "node0").iterdir())
    other = json.loads(json.dumps(cfg))
    other["mcc"]["g"] = 0.3
    errors = _agree(tmp_path, tiny_store, [shared, shared], [cfg, other], "settings")
    assert errors[0] == errors[1] and "rank 1" in errors[0] and "mcc.g (0.2 → 0.3)" in errors[0]


# ───────────────────────── two nodes on localhost, kebr's own launcher ─────────────────────────


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_nodes(args_of_node: list[list[str]], timeout: int = 400) -> list[subprocess.CompletedProcess]:
    """Start `kebr ARGS --nnodes 2 --rdzv-endpoint localhost:PORT` once per simulated node, at the same time;
    a hang fails the test after `timeout` seconds instead of blocking."""
    endpoint = f"localhost:{free_port()}"
    procs = [subprocess.Popen([sys.executable, "-m", "kebr_cli", *args, "--nnodes", "2", "--node-rank", str(rank),
                               "--rdzv-endpoint", endpoint], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for rank, args in enumerate(args_of_node)]
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            p.kill()
    return done


@pytest.mark.slow
def test_two_nodes_pretrain_resume_and_eval_like_one_process(tiny_store: Path, tmp_path: Path) -> None:
    """Two simulated nodes (c10d rendezvous on localhost, one gloo process each) pretrain one epoch, resume to two
    from the shared folder and fine-tune: the metrics are one process's up to float error, and rank 0 alone wrote."""
    pre2, pre1, ev2, ev1 = (tmp_path / name for name in ("pre2", "pre1", "ev2", "ev1"))
    pretrain = ["pretrain", str(tiny_store), *FAST]
    for result in two_nodes([[*pretrain, "-o", str(pre2), "--epochs", "1"]] * 2):
        assert result.returncode == 0, result.stderr
    for result in two_nodes([[*pretrain, "-o", str(pre2), "--epochs", "2", "--resume"]] * 2):
        assert result.returncode == 0, result.stderr
    # A frozen encoder, as tests/test_cli_train.py's DDP check: Adam on a fine-tuned encoder turns float noise
    # into ±lr steps, so unfrozen runs of 1 and 2 processes drift apart beyond float tolerance.
    evaluate = ["eval", "-d", str(tiny_store), "--pretrained", str(pre2), "--epochs", "1", "--seeds", "1",
                "--freeze-encoder", *FAST]
    for result in two_nodes([[*evaluate, "-o", str(ev2)]] * 2):
        assert result.returncode == 0, result.stderr
    assert runner.invoke(app, [*pretrain, "-o", str(pre1), "--epochs", "2"]).exit_code == 0
    assert runner.invoke(app, [*evaluate[:4], str(pre1), *evaluate[5:], "-o", str(ev1)]).exit_code == 0

    rows = [p.joinpath("metrics.csv").read_text().splitlines() for p in (pre2, pre1)]
    assert len(rows[0]) == len(rows[1]) == 3  # header + 2 epochs: the resume continued from epoch 1
    for two, one in zip(rows[0][1:], rows[1][1:]):
        numbers = lambda row: [float(x) for x in row.split(",")[:-1]]  # noqa: E731 (the last column: seconds)
        assert numbers(two) == pytest.approx(numbers(one), rel=1e-4, abs=1e-5)
    assert json.loads((pre2 / "config.json").read_text())["world_size"] == 2
    a, b = (json.loads((p / "results.json").read_text())["per_seed"][0] for p in (ev2, ev1))
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    # Only rank 0 wrote: one log, no nonce left, nothing beside the run's own files.
    assert sorted(p.name for p in ev2.iterdir()) == sorted(p.name for p in ev1.iterdir())
    assert not [p for p in tmp_path.rglob(f"{NONCE_PREFIX}*")]


@pytest.mark.slow
def test_a_node_that_cannot_see_the_output_folder_fails_fast(tiny_store: Path, tmp_path: Path) -> None:
    """Each simulated node gets its own --out, as two machines whose runs/ is not on a shared disk: both stop at
    start with the same sentence, non-zero, before training."""
    pretrain = ["pretrain", str(tiny_store), *FAST, "--epochs", "50"]
    results = two_nodes([[*pretrain, "-o", str(tmp_path / f"node{rank}")] for rank in range(2)], timeout=300)
    for result in results:
        assert result.returncode != 0
        assert SHARED_FOLDER in " ".join(result.stderr.split())
    assert not any((tmp_path / f"node{rank}" / "metrics.csv").exists() for rank in range(2))


# ───────────────────────── seed shards ─────────────────────────


def _per_seed(run: Path) -> dict[int, dict]:
    return {int(p.parent.name.split("-")[1]): json.loads(p.read_text())["test"] for p in run.glob("seed-*/test.json")}


def test_seed_shards_one_after_the_other_aggregate_to_the_one_shot_run(tiny_store: Path, tmp_path: Path) -> None:
    common = ["eval", "-d", str(tiny_store), "--epochs", "1", "--seeds", "3", *FAST]
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    assert runner.invoke(app, [*common, "-o", str(one)]).exit_code == 0
    r = runner.invoke(app, [*common, "-o", str(sharded), "--seed-shard", "1/2"])
    assert r.exit_code == 0, r.output
    assert sorted(_per_seed(sharded)) == [1] and not (sharded / "results.json").exists()
    flat = " ".join(r.output.split())  # Rich wraps at the terminal's width, which differs with the path's length
    assert "--collect" in flat and "--seed-shard" not in flat.split("When every shard")[1]
    r = runner.invoke(app, [*common, "-o", str(sharded), "--collect"])
    assert r.exit_code == 1 and "seed(s) 0, 2 still to run" in " ".join(r.output.split())
    assert runner.invoke(app, [*common, "-o", str(sharded), "--seed-shard", "0/2"]).exit_code == 0
    assert sorted(_per_seed(sharded)) == [0, 1, 2] and not (sharded / "results.json").exists()
    finished = {p: p.stat().st_mtime_ns for p in sharded.glob("seed-*/*")}
    r = runner.invoke(app, [*common, "-o", str(sharded)])  # a plain eval aggregates and runs nothing again
    assert r.exit_code == 0, r.output
    assert {p: p.stat().st_mtime_ns for p in sharded.glob("seed-*/*")} == finished
    assert _per_seed(sharded) == _per_seed(one)
    a, b = (json.loads((p / "results.json").read_text()) for p in (sharded, one))
    assert a["mean"] == b["mean"] and a["std"] == b["std"] and a["per_seed"] == b["per_seed"]
    # best-model/ holds the same seed whichever order the seeds finished in
    assert (json.loads((sharded / "best-model" / "selection.json").read_text())
            == json.loads((one / "best-model" / "selection.json").read_text()))
    # the shard is no part of the run's identity; other settings still are
    r = runner.invoke(app, [*common, "-o", str(sharded), "--seed-shard", "0/3", "--lr", "0.5"])
    assert r.exit_code == 1 and "train.lr" in r.output


@pytest.mark.slow
def test_two_seed_shards_at_once_then_collect(tiny_store: Path, tmp_path: Path) -> None:
    common = [sys.executable, "-m", "kebr_cli", "eval", "-d", str(tiny_store), "--epochs", "1", "--seeds", "4", *FAST,
              "-o", str(tmp_path / "run")]
    procs = [subprocess.Popen([*common, "--seed-shard", f"{i}/2"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seeds"] == [0, 1, 2, 3]
    r = runner.invoke(app, [*common[3:], "--collect"])
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["seeds"] == [0, 1, 2, 3] and len(results["per_seed"]) == 4
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.parametrize("command, option, extra, message", [
    ("eval", "--seed-shard", ["--collect"], "--seed-shard runs seeds and --collect runs none: give one of them."),
    ("eval", "--seed-shard", ["--force"], "--force cannot go with --seed-shard or --collect: it would remove the seeds "
                                          "other jobs finished; start afresh with a plain --force run, then shard again."),
    ("ablate", "--shard", ["--collect"], "--shard runs configurations and --collect runs none: give one of them."),
    ("ablate", "--shard", ["--force"], "--force cannot go with --shard or --collect: it would remove the configurations "
                                       "other jobs finished; start afresh with a plain --force run, then shard again."),
])
def test_a_shard_with_collect_or_force_is_one_sentence_and_runs_nothing(tiny_store: Path, tmp_path: Path, command: str,
                                                                       option: str, extra: list, message: str) -> None:
    """The guards of a run split into parts, one home (`shards.check_part_run`) for both commands."""
    out = tmp_path / "run"
    r = runner.invoke(app, [command, "-d", str(tiny_store), "-o", str(out), "--epochs", "1", *FAST, option, "0/2", *extra])
    assert r.exit_code == 1 and " ".join(r.output.split()).endswith(message), r.output
    assert not out.exists()


# ───────────────────────── ablation shards ─────────────────────────


def test_ablation_shards_then_collect_equal_the_one_shot_ablation(tiny_store: Path, tmp_path: Path) -> None:
    common = ["ablate", "-d", str(tiny_store), "--no-mcc", "--pretrain-epochs", "1", "--epochs", "1", "--seeds", "1",
              *FAST]
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    assert runner.invoke(app, [*common, "-o", str(one)]).exit_code == 0
    r = runner.invoke(app, [*common, "-o", str(sharded), "--shard", "1/2"])
    assert r.exit_code == 0, r.output
    assert "C4" in r.output and not (sharded / "ablation.json").exists()
    r = runner.invoke(app, [*common, "-o", str(sharded), "--collect"])
    assert r.exit_code == 1 and "C1 (pretraining)" in r.output and "C4" not in r.output.split("finished:")[1]
    assert runner.invoke(app, [*common, "-o", str(sharded), "--shard", "0/2"]).exit_code == 0
    r = runner.invoke(app, [*common, "-o", str(sharded), "--collect"])
    assert r.exit_code == 0, r.output
    a, b = (json.loads((p / "ablation.json").read_text())["configurations"] for p in (sharded, one))
    assert [r["name"] for r in a] == ["C1", "C4"]
    assert [(r["mean"], r["std"], r["avg_change"]) for r in a] == [(r["mean"], r["std"], r["avg_change"]) for r in b]


def test_a_pretraining_two_shards_share_is_trained_once(tiny_store: Path, tmp_path: Path, monkeypatch) -> None:
    """The sweep's g = +0.20 is C1 itself (not a second configuration): two shards train its pretraining once."""
    import kebr_core.recipes.ablate as ablate_recipe

    trained: list[Path] = []
    pretrain = ablate_recipe.pretrain

    def counting(store, run_dir, *args, **kwargs):
        trained.append(Path(run_dir))
        return pretrain(store, run_dir, *args, **kwargs)

    monkeypatch.setattr(ablate_recipe, "pretrain", counting)
    common = ["ablate", "-d", str(tiny_store), "--g-sweep", "--g-values", "0.2", "--pretrain-epochs", "1", "--epochs", "1",
              "--seeds", "1", *FAST, "-o", str(tmp_path / "run")]
    for i in range(2):
        r = runner.invoke(app, [*common, "--shard", f"{i}/2"])
        assert r.exit_code == 0, r.output
    assert [p.name for p in trained] == ["tcmf-mcc-g+0.20-paper-tile"]

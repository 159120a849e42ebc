"""The torchrun relaunch: `kebr pretrain|eval|ablate … --nproc-per-node N [--nnodes M]` runs the same
command again under torchrun (through `kebr_cli.torchrun`), one process per rank, without the launcher's
own options; the nodes' rendezvous options and their checks.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from kebr_cli.app import SIGTERM_NAME, err_console, user_errors, without_options
from kebr_core.errors import KebrError

# How several machines are named (kebr pretrain/eval/ablate pass these on to torchrun; README "Many machines").
NNodes = typer.Option(1, "--nnodes", min=1, help="Machines (nodes) taking part; start the same command on each, with its own --node-rank. More than 1 needs --rdzv-endpoint or --master-addr.")
NodeRank = typer.Option(None, "--node-rank", min=0, show_default=False, help="This machine's number among --nnodes, 0 .. nnodes-1 (node 0 holds rank 0, which writes; default: $SLURM_NODEID under SLURM, else 0; with --rdzv-endpoint the nodes are numbered as they join).")
RdzvEndpoint = typer.Option(None, "--rdzv-endpoint", metavar="HOST:PORT", help="Where the nodes meet (torchrun's c10d rendezvous): a host every node can reach and a free port on it, the same on every node.")
MasterAddr = typer.Option(None, "--master-addr", metavar="HOST", help="Instead of --rdzv-endpoint: the host of node 0 (torchrun's static rendezvous; --node-rank then fixes each node's ranks).")
MasterPort = typer.Option(29500, "--master-port", min=1, max=65535, help="The port on --master-addr.")

# The launcher's own options: the command torchrun starts on each process must not carry them.
LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--master-addr", "--master-port")


def launch_wanted(nproc: int, nnodes: int) -> bool:
    """Whether the command runs under torchrun: several processes here, or several machines."""
    return nproc > 1 or nnodes > 1


def node_rank_or_slurm(node_rank: Optional[int]) -> int:
    """--node-rank as given; unset, SLURM's number of this node ($SLURM_NODEID, so that one `srun kebr …`
    line gives every node its own), else 0."""
    if node_rank is not None:
        return node_rank
    slurm = os.environ.get("SLURM_NODEID", "")
    if slurm and not slurm.isdigit():
        raise KebrError(f"$SLURM_NODEID is {slurm!r}, not a node number; pass --node-rank.")
    return int(slurm or 0)


def torchrun_arguments(nproc: int, nnodes: int = 1, node_rank: Optional[int] = None, rdzv_endpoint: Optional[str] = None,
                       master_addr: Optional[str] = None, master_port: int = 29500) -> list[str]:
    """torchrun's options for this launch: --standalone on one machine, else the nodes' rendezvous
    (c10d at `rdzv_endpoint`, or static at `master_addr`:`master_port`, this node numbered by
    `node_rank_or_slurm`)."""
    node_rank = node_rank_or_slurm(node_rank) if nnodes > 1 else 0
    if node_rank >= nnodes:
        raise KebrError(f"--node-rank {node_rank} is out of range: with --nnodes {nnodes} it must be 0 .. {nnodes - 1}.")
    if rdzv_endpoint is not None and master_addr is not None:
        raise KebrError("--rdzv-endpoint and --master-addr both name where the nodes meet: give one of them.")
    if rdzv_endpoint is not None:
        host, _, port = rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise KebrError(f"--rdzv-endpoint must be HOST:PORT (e.g. node0.cluster:29400), not {rdzv_endpoint!r}.")
    if rdzv_endpoint is not None:
        # The c10d rendezvous numbers the nodes as they join (torchrun ignores --node-rank there). One fixed
        # job id: every node must give the same, and the endpoint already tells jobs apart.
        return [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", "--rdzv-id=kebr"]
    if master_addr is not None:
        return [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}", f"--master-port={master_port}"]
    if nnodes > 1:
        raise KebrError(f"--nnodes {nnodes} needs to know where the nodes meet: add --rdzv-endpoint HOST:PORT "
                        "(or --master-addr HOST), the same on every node.")
    return ["--standalone"]


def relaunch_distributed(nproc: int, nnodes: int = 1, node_rank: Optional[int] = None, rdzv_endpoint: Optional[str] = None,
                         master_addr: Optional[str] = None, master_port: int = 29500) -> "typer.Exit":
    """Run this same command under torchrun with `nproc` processes on this machine (DDP), one of `nnodes`
    machines, and return its exit.

    The command line is taken from sys.argv without the launcher's own options (`LAUNCH_OPTIONS`)."""
    import signal
    import subprocess

    with user_errors():
        launch = torchrun_arguments(nproc, nnodes, node_rank, rdzv_endpoint, master_addr, master_port)
    args = without_options(sys.argv[1:], LAUNCH_OPTIONS)
    # torchrun through kebr_cli.torchrun: its traceback on Ctrl-C and its failure summary are left out
    cmd = [sys.executable, "-m", "kebr_cli.torchrun", *launch, f"--nproc-per-node={nproc}", "-m", "kebr_cli", *args]
    where = f" on node {node_rank_or_slurm(node_rank)} of {nnodes}" if nnodes > 1 else ""
    err_console.print(f"launching {nproc} process(es){where}: {' '.join(cmd[1:])}", highlight=False)
    launcher = subprocess.Popen(cmd)
    try:
        return typer.Exit(launcher.wait())
    except KeyboardInterrupt as e:
        # Ctrl-C reached torchrun too (the terminal signals the whole group); a SIGTERM sent to this process
        # alone is passed on, so that torchrun stops its workers and they save their last epoch.
        if e.args == (SIGTERM_NAME,):
            launcher.send_signal(signal.SIGTERM)
        return typer.Exit(launcher.wait())

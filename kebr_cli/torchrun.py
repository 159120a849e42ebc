"""torchrun as `kebr … --nproc-per-node N` starts it (`launcher.relaunch_distributed`): torchrun's own launcher,
run so that a stop says one thing. Every rank already reports its own end (the one "interrupted …" line of
rank 0 on Ctrl-C, an error's sentence), so torchrun's traceback for the signal it got and its summary of the
failed ranks are left out; the exit status says how it ended (130 after Ctrl-C, a failed rank's own status)."""

from __future__ import annotations

import logging
import signal
import sys


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The agent's notes on stopping the other ranks and on which failed are its own bookkeeping: each rank
    # has said why it stopped (a rank killed by a signal cannot, so that is said below).
    import torch.distributed.elastic.agent.server.api  # noqa: F401  (its logger, created on import, is quietened too)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):  # each sets its own level ($LOGLEVEL): not inherited
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except SignalException as e:
        return 130 if e.sigval == signal.SIGINT else 128 + int(e.sigval)
    except ChildFailedError as e:
        codes = [f.exitcode for _, f in sorted(e.failures.items())]
        if all(code < 0 for code in codes):  # only killed ranks (the out-of-memory killer): none said why
            rank, failure = min(e.failures.items())
            print(f"error: rank {rank} was killed by {failure.signal_name()}.", file=sys.stderr)
        # else a rank stopped on its own and said why; the others were stopped by torchrun after it
        return next((c for c in codes if c > 0), 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

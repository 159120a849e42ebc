"""Where per-epoch metrics go: one small logger interface (torchtune's `metric_logger` is the model).

A `MetricLogger` takes scalars by name and step (`log`), a whole metrics row at once (`log_dict`), the
run's resolved configuration with its final metrics (`log_config`, TensorBoard's hparams) and figures
(`log_figure`), and is closed at the end (`close`). Implementations:

- `CSVLogger`: metrics.csv, one row per epoch (`runs.MetricsLog`, whose content it does not change);
  always written;
- `TensorBoardLogger`: a TensorBoard event folder (`--report-to tensorboard`; the optional extra
  `pip install kebr[tensorboard]`);
- `CompositeLogger`: several at once.

Layout (the run-directory contract, `runs.TENSORBOARD`): each metrics.csv gets a TensorBoard folder
beside it, holding the same columns as scalars tagged `<stage>/seed-<S>/<column>` at step = epoch:
a pretraining run's RUN/tensorboard, each fine-tuning seed's RUN/seed-S/tensorboard, each search
trial's trials/trial-NNNN/tensorboard. An evaluation run's RUN/tensorboard holds its resolved
configuration as hparams with the test metrics (mean and std over seeds, `final/test_<metric>`); a
pretraining run's holds them beside its curves (`final/<column>`, the last epoch's). `kebr analyze
--report-to tensorboard` adds its figures to OUT/tensorboard (OUT: its output folder).

A resumed pretraining keeps metrics.csv's rows up to the checkpoint's epoch; its TensorBoard folder
gets a restart marker at the first epoch run again (`purge_step`), so TensorBoard drops the older
events from there on, as the CSV drops its rows. `report_to` is operational (`config.operational_keys()`):
it never changes a run's identity.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from kebr_core import run_identity, runs
from kebr_core.errors import KebrError

TENSORBOARD_MISSING = ("--report-to tensorboard needs the tensorboard package, which is not installed: "
                       "pip install kebr[tensorboard].")


class MetricLogger:
    """The interface: `log`, `log_dict` and `close`; `log_config` and `log_figure` do nothing unless an
    implementation can show them."""

    def log(self, name: str, value: float, step: int) -> None:
        raise NotImplementedError

    def log_dict(self, row: Mapping[str, Any], step: int) -> None:
        raise NotImplementedError

    def log_config(self, config: Mapping[str, Any], final: Mapping[str, float], step: int) -> None:
        """The resolved configuration (nested sections) with the run's final metrics."""

    def log_figure(self, name: str, figure: Any, step: int = 0) -> None:
        """A matplotlib Figure."""

    def close(self) -> None:
        raise NotImplementedError


class CSVLogger(MetricLogger):
    """metrics.csv: `log_dict` writes one row, the step as its `epoch` column (first); `log` collects the
    scalars of one step into one row, written when the step changes or at `close`. A resumed run keeps
    the rows up to `truncate_after_epoch` (`runs.MetricsLog`)."""

    def __init__(self, path: Path, truncate_after_epoch: int | None = None):
        self.table = runs.MetricsLog(path, truncate_after_epoch=truncate_after_epoch)
        self.pending: tuple[int, dict[str, Any]] | None = None

    def log(self, name: str, value: float, step: int) -> None:
        if self.pending is not None and self.pending[0] != step:
            self.flush()
        self.pending = self.pending or (step, {})
        self.pending[1][name] = value

    def log_dict(self, row: Mapping[str, Any], step: int) -> None:
        self.flush()
        self.table.append({"epoch": step} | dict(row))

    def flush(self) -> None:
        if self.pending is not None:
            step, row = self.pending
            self.pending = None
            self.log_dict(row, step)

    def close(self) -> None:
        self.flush()


class TensorBoardLogger(MetricLogger):
    """A TensorBoard event folder `log_dir`; scalar tags are `prefix + name`. purge_step: TensorBoard
    drops this folder's earlier events at steps ≥ it (a resumed or restarted run). Every `log_dict`
    is flushed to disk, so a killed run keeps its finished epochs."""

    def __init__(self, log_dir: Path, prefix: str = "", purge_step: int | None = None):
        require(["tensorboard"])
        from torch.utils.tensorboard import SummaryWriter

        self.prefix = prefix
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, name: str, value: float, step: int) -> None:
        self.writer.add_scalar(self.prefix + name, float(value), step)

    def log_dict(self, row: Mapping[str, Any], step: int) -> None:
        for name, value in row.items():
            if name != "epoch":  # the step itself
                self.log(name, value, step)
        self.writer.flush()

    def log_config(self, config: Mapping[str, Any], final: Mapping[str, float], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"final/{name}": float(value) for name, value in final.items() if name != "epoch"}
        experiment, session_start, session_end = hparams(hparam_values(config), metrics)
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary, step)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def log_figure(self, name: str, figure: Any, step: int = 0) -> None:
        self.writer.add_figure(name, figure, step, close=False)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CompositeLogger(MetricLogger):
    """Every call goes to each of `loggers`, in order."""

    def __init__(self, loggers: Iterable[MetricLogger]):
        self.loggers = list(loggers)

    def log(self, name: str, value: float, step: int) -> None:
        for logger in self.loggers:
            logger.log(name, value, step)

    def log_dict(self, row: Mapping[str, Any], step: int) -> None:
        for logger in self.loggers:
            logger.log_dict(row, step)

    def log_config(self, config: Mapping[str, Any], final: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_config(config, final, step)

    def log_figure(self, name: str, figure: Any, step: int = 0) -> None:
        for logger in self.loggers:
            logger.log_figure(name, figure, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def require(report_to: Iterable[str]) -> None:
    """KebrError in one sentence when `report_to` names tensorboard and it is not installed: checked before
    a run starts, so nothing is trained or written first."""
    if "tensorboard" not in report_to:
        return
    try:
        import tensorboard  # noqa: F401  (the package the extra installs; torch's writer needs it)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise KebrError(TENSORBOARD_MISSING) from None


def hparam_values(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """The configuration as hparams: dotted keys (`run_identity.flatten`), values TensorBoard can show (a list or
    None as its JSON text)."""
    return {key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
            for key, value in run_identity.flatten(config).items()}


def epoch_logger(metrics_path: Path, config: Mapping[str, Any], stage: str, seed: int,
                 first_epoch: int = 1) -> MetricLogger:
    """The logger of one training loop: metrics.csv at `metrics_path` (rows before `first_epoch` kept), and
    with train.report_to naming tensorboard the folder beside it (module docstring), tags
    `<stage>/seed-<seed>/<column>`. config: the run's `RunConfig.to_dict()`."""
    loggers: list[MetricLogger] = [CSVLogger(metrics_path, truncate_after_epoch=first_epoch - 1)]
    if "tensorboard" in config["train"]["report_to"]:
        loggers.append(TensorBoardLogger(metrics_path.parent / runs.TENSORBOARD, prefix=f"{stage}/seed-{seed}/",
                                         purge_step=first_epoch))
    return CompositeLogger(loggers)


def report_final(run_dir: Path, config: Mapping[str, Any], summary: Mapping[str, tuple[float, float]]) -> None:
    """An evaluation run's configuration as hparams with its test metrics (`summary`: metric → (mean, std)
    over seeds) in RUN/tensorboard, replacing what an earlier call wrote there; nothing without
    tensorboard in train.report_to."""
    if "tensorboard" not in config["train"]["report_to"]:
        return
    final = {}
    for name, (mean, std) in summary.items():
        final[f"test_{name}"] = mean
        if math.isfinite(std):
            final[f"test_{name}_std"] = std
    logger = TensorBoardLogger(Path(run_dir) / runs.TENSORBOARD, purge_step=0)
    logger.log_config(config, final, step=0)
    logger.close()


def report_figures(folder: Path, figures: Mapping[str, Any], report_to: Iterable[str]) -> None:
    """`kebr analyze`'s figures ({name: matplotlib Figure}) as images in folder/tensorboard at step 0,
    replacing those an earlier call wrote there; nothing without tensorboard in `report_to`."""
    if "tensorboard" not in report_to or not figures:
        return
    logger = TensorBoardLogger(Path(folder) / runs.TENSORBOARD, purge_step=0)
    for name, figure in figures.items():
        logger.log_figure(f"analyze/{name}", figure)
    logger.close()

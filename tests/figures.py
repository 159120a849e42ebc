"""What a matplotlib Figure draws, for the tests of `kebr analyze` (kebr_core.analysis, recipes/analyze)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure


@dataclass
class AxesSummary:
    """What one data panel of a figure shows (colour bars are left out).

    curves: (legend label, number of points) per Line2D or error-bar series, in drawing order.
    points: number of scatter points (PCA panels).
    """

    title: str
    xlabel: str
    ylabel: str
    curves: list[tuple[str, int]]
    points: int


def summarize(fig: Figure) -> list[AxesSummary]:
    """Per data axes: every legend-labelled curve with its point count, and the scatter points."""
    summaries = []
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        curves: list[tuple[str, int]] = []
        in_containers = set()
        for container in ax.containers:
            if isinstance(container, ErrorbarContainer):
                data_line = container.lines[0]
                in_containers.add(id(data_line))
                in_containers.update(id(cap) for cap in container.lines[1])
                curves.append((container.get_label(), len(data_line.get_xdata())))
        for line in ax.lines:
            if id(line) not in in_containers and not line.get_label().startswith("_"):
                curves.append((line.get_label(), len(np.atleast_1d(line.get_xdata()))))
        points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
        summaries.append(AxesSummary(ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), curves, points))
    return summaries

"""Helpers shared by the benchmark scripts (run as `python bench/NAME.py`, so this imports as `_common`)."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path


def add_label_csv_option(parser: argparse.ArgumentParser) -> None:
    """--label-csv: CMU-MOSI's MMSA label.csv, by default $KEBR_MOSI_LABELS (the repository does not ship it)."""
    default = os.environ.get("KEBR_MOSI_LABELS")
    parser.add_argument("--label-csv", type=Path, default=Path(default) if default else None,
                        help="CMU-MOSI's MMSA label.csv (default: $KEBR_MOSI_LABELS)")


def check_label_csv(parser: argparse.ArgumentParser, path: Path | None) -> None:
    """Stop with one sentence when --label-csv is neither given nor a file."""
    if path is None:
        parser.error("this benchmark needs CMU-MOSI's MMSA label.csv: pass --label-csv or set KEBR_MOSI_LABELS")
    if not path.is_file():
        parser.error(f"--label-csv {path} is not a file")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, for the machine line every benchmark prints."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"

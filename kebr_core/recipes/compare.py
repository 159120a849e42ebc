"""Recipe: `kebr compare RUN_A RUN_B [RUN_C …]`: paired differences between configurations run on the same
data and seeds (the statistics: `kebr_core.stats`; docs/design.md §7, "Paired differences").

Inputs (`parse_input`): an evaluation run directory; an ablation directory (every finished configuration
in it, in its order); or one configuration of an ablation as `ABLATION_DIR:NAME` (e.g. `runs/ab:C4`).
The first configuration is the reference A; every other one, B, is compared with it, metric by metric:
the means of A and B over all (pretraining × fine-tuning) seeds, the mean paired difference B − A with its
interval and sign-flip p, and the variance components of the difference (`stats.variance_components`).

Pairing: B must have been run on the same data (the store fingerprint of config.json, its path aside: a
copied store is the same data) and on the same pretraining and fine-tuning seeds (finished ones) as A;
otherwise the comparison is refused with one sentence naming what differs.

Output (`-o DIR`, default a folder `compare-A-vs-B…` beside the first input): compare.json (everything) and
compare.csv (one row per compared run and metric), each written whole or not at all (`io.atomic_output`).
A folder that holds the comparison of other inputs, or a compare.csv without compare.json (a user's
file), is refused unless `force`; the same comparison is replaced (its runs may have finished more seeds).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kebr_core import run_identity, runs
from kebr_core.errors import KebrError
from kebr_core.io import atomic_output
from kebr_core.metrics import METRIC_NAMES
from kebr_core.run_readers import RunDataMissing, SeedGrid, seed_grids
from kebr_core.stats import PairedDifference, paired_difference, variance_components

CSV_COLUMNS = ("reference", "run", "metric", "reference_mean", "run_mean", "difference", "low", "high", "confidence",
               "p_value", "method", "n_pretrain", "n_finetune", "var_pretrain", "var_finetune")


@dataclass(frozen=True)
class Compared:
    """One input configuration: its label in tables, where it came from and its seed grid."""

    label: str
    source: str  # the run directory, or ABLATION_DIR:NAME, as given
    key: str  # the same with the directory resolved: what identifies the input in compare.json
    grid: SeedGrid


@dataclass
class Comparison:
    """B against the reference A: per metric, the paired difference B − A and the means of both."""

    reference: Compared
    run: Compared
    differs: list[str]  # the configuration keys that differ, 'key (A → B)'
    differences: dict[str, PairedDifference]
    reference_means: dict[str, float]
    run_means: dict[str, float]
    variance: dict[str, dict[str, float]]  # metric -> variance components of the (P, F) differences

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference.label, "run": self.run.label, "differs": self.differs,
            "metrics": {m: {"reference_mean": self.reference_means[m], "run_mean": self.run_means[m],
                            **d.to_dict(), "variance": self.variance[m]} for m, d in self.differences.items()},
        }


@dataclass
class CompareResult:
    out: Path
    inputs: list[Compared]
    comparisons: list[Comparison]
    files: list[Path] = field(default_factory=list)


def parse_input(text: str) -> tuple[Path, str | None]:
    """A run directory, or `ABLATION_DIR:NAME` (split at the last ':' when the whole is not a path)."""
    path = Path(text)
    if path.exists() or ":" not in text:
        return path, None
    head, name = text.rsplit(":", 1)
    if not head or not name:
        raise KebrError(f"{text} is neither a run directory nor ABLATION_DIR:NAME (e.g. runs/ablate:C4).")
    return Path(head), name


def load_inputs(texts: Sequence[str]) -> list[Compared]:
    """The configurations the inputs name (module docstring), labelled uniquely."""
    found: list[tuple[str, str, str, SeedGrid]] = []  # (short label, source, key, grid)
    for text in texts:
        path, name = parse_input(text)
        try:
            grids = seed_grids(path)
        except RunDataMissing as e:
            raise KebrError(f"{text} cannot be compared: {e}") from None
        if not (path / runs.ABLATION_JSON).is_file():  # an evaluation run (of one or of several pretrainings)
            if name is not None:
                raise KebrError(f"{path} is an evaluation run, not an ablation; name it without ':{name}'.")
            found.append((grids[0].name, str(path), str(path.resolve()), grids[0]))
            continue
        if name is not None:
            chosen = [g for g in grids if g.name == name]
            if not chosen:
                raise KebrError(f"Ablation {path} has no finished configuration {name!r} (finished: "
                                f"{', '.join(g.name for g in grids)}).")
            grids = chosen
        found += [(g.name, f"{path}:{g.name}", f"{path.resolve()}:{g.name}", g) for g in grids]
    sources, keys = [source for _, source, _, _ in found], [key for _, _, key, _ in found]
    for source, key in zip(sources, keys):
        if keys.count(key) > 1:
            raise KebrError(f"{source} is given twice; compare different configurations.")
    if len(found) < 2:
        raise KebrError(f"kebr compare needs at least two configurations; {', '.join(texts)} hold "
                        f"{len(found)} ({', '.join(sources)}).")
    short = [label for label, _, _, _ in found]
    # a label used twice (C1 of two ablations) becomes its source, which is unique
    return [Compared(label if short.count(label) == 1 else source, source, key, grid)
            for label, source, key, grid in found]


def _seeds(seeds: Sequence[int]) -> str:
    return ", ".join(map(str, seeds)) or "none"


def pairing_problems(a: Compared, b: Compared) -> list[str]:
    """Why b cannot be paired with a (other data, other seeds), or [] when it can."""
    problems = []
    data = run_identity.identity_differences(a.grid.data, b.grid.data, ignore={"store"})
    if data:
        problems.append(f"other data ({'; '.join(data[:3])}{'; …' if len(data) > 3 else ''})")
    for what, sa, sb in (("pretraining", a.grid.pretrain_seeds, b.grid.pretrain_seeds),
                         ("fine-tuning", a.grid.finetune_seeds, b.grid.finetune_seeds)):
        if tuple(sa) != tuple(sb):
            problems.append(f"other {what} seeds (finished: {_seeds(sb)} vs {_seeds(sa)})")
    return problems


def compare_grids(reference: Compared, run: Compared, confidence: float = 0.95) -> Comparison:
    """The paired differences run − reference of every metric both have (`METRIC_NAMES` order first);
    KebrError naming what differs when the two are not paired."""
    problems = pairing_problems(reference, run)
    if problems:
        raise KebrError(f"{run.source} cannot be paired with {reference.source}: {'; '.join(problems)}; compare runs "
                        "made on the same data with the same seeds.")
    common = [m for m in reference.grid.values if m in run.grid.values]
    metrics = sorted(common, key=lambda m: METRIC_NAMES.index(m) if m in METRIC_NAMES else len(METRIC_NAMES))
    a, b = reference.grid.values, run.grid.values
    return Comparison(
        reference=reference, run=run, differs=run_identity.identity_differences(reference.grid.identity, run.grid.identity),
        differences={m: paired_difference(a[m], b[m], m, confidence) for m in metrics},
        reference_means={m: float(np.mean(a[m])) for m in metrics}, run_means={m: float(np.mean(b[m])) for m in metrics},
        variance={m: variance_components(b[m] - a[m]) for m in metrics},
    )


def default_out(first_input: str, inputs: list[Compared]) -> Path:
    """compare-A-vs-B[-vs-C…] beside the first input (its parent folder), in safe characters."""
    name = "compare-" + "-vs-".join(re.sub(r"[^A-Za-z0-9_.=+-]+", "_", c.label.split("/")[-1]) for c in inputs)
    return parse_input(first_input)[0].resolve().parent / name[:120]


def _check_out(out: Path, payload: dict[str, Any], force: bool) -> None:
    """Refuse to replace another comparison's files or a user's, unless `force` (module docstring)."""
    if out.exists() and not out.is_dir():
        raise KebrError(f"Output {out} is a file, not a directory.")
    if force:
        return
    existing = out / runs.COMPARE_JSON
    if existing.is_file():
        try:
            earlier = json.loads(existing.read_text()).get("inputs")
        except (OSError, ValueError, AttributeError):
            earlier = None
        if earlier != payload["inputs"]:
            raise KebrError(f"{existing} holds another comparison ({earlier}); pass --force to replace it or choose "
                            "another -o.")
    elif (out / runs.COMPARE_CSV).exists():
        raise KebrError(f"{out / runs.COMPARE_CSV} exists and is not a kebr comparison; pass --force to replace it "
                        "or choose another -o.")


def _json_safe(value: Any) -> Any:
    """NaN and infinities (an undefined interval or Corr) as null: compare.json stays standard JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def compare(texts: Sequence[str], out: str | Path | None = None, *, confidence: float = 0.95,
            force: bool = False) -> CompareResult:
    """Compare every input configuration with the first (module docstring); write compare.json and
    compare.csv into `out` (default `default_out`)."""
    if not 0 < confidence < 1:
        raise KebrError(f"--confidence must lie strictly between 0 and 1, not {confidence}.")
    inputs = load_inputs(texts)
    comparisons = [compare_grids(inputs[0], other, confidence) for other in inputs[1:]]
    out = Path(out) if out is not None else default_out(texts[0], inputs)
    payload = {
        "inputs": [c.key for c in inputs], "reference": inputs[0].label, "confidence": confidence,
        "runs": [{"label": c.label, "source": c.source, "pretrain_seeds": list(c.grid.pretrain_seeds),
                  "finetune_seeds": list(c.grid.finetune_seeds), "data": c.grid.data} for c in inputs],
        "comparisons": [c.to_dict() for c in comparisons],
    }
    _check_out(out, payload, force)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / runs.COMPARE_JSON, overwrite=True) as tmp:
        tmp.write_text(json.dumps(_json_safe(payload), indent=2, default=str))
    with atomic_output(out / runs.COMPARE_CSV, overwrite=True) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for c in comparisons:
            for m, d in c.differences.items():
                writer.writerow([c.reference.label, c.run.label, m, c.reference_means[m], c.run_means[m], d.mean, d.low,
                                 d.high, d.confidence, d.p_value, d.method, d.n_pretrain, d.n_finetune,
                                 c.variance[m]["pretrain"], c.variance[m]["finetune"]])
    return CompareResult(out=out, inputs=inputs, comparisons=comparisons,
                         files=[out / runs.COMPARE_JSON, out / runs.COMPARE_CSV])


# ───────────────────────── configurations against one (kebr analyze's forest plot) ─────────────────────────


def against_reference(grids: Sequence[SeedGrid], reference: str = "C1",
                      confidence: float = 0.95) -> tuple[list[Comparison], list[str]]:
    """Every grid against `reference` (the first grid when none has that name): the comparisons, and one
    reason per grid that cannot be paired with it (left out)."""
    items = [Compared(g.name, g.name, g.name, g) for g in grids]
    ref = next((c for c in items if c.label == reference), items[0] if items else None)
    comparisons, left_out = [], []
    for item in items:
        if item is ref:
            continue
        try:
            comparisons.append(compare_grids(ref, item, confidence))
        except KebrError as e:
            left_out.append(str(e))
    return comparisons, left_out


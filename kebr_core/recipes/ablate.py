"""Recipe: the paper's ablations (§4.5, Table 4), the g-sweep (Fig. 4) and MCC variants (docs/design.md §8).

Configurations of Table 4:

    C1  pretraining + TCMF + MCC      (the full model, the reference row)
    C2  no pretraining                (fine-tune from the plain text encoder)
    C3  no TCMF                       (`c3`: "late", no cross-modal network, LateFusion; or "symmetric",
                                       three equal streams attending to each other, SymmetricFusion,
                                       our reading of Table 4's caption; the table's caption names it)
    C4  no MCC                        (λ = 0 in both stages)
    C5  none of the three

Pretraining data: a separate pretraining store (all its samples), else the dataset's own samples of every
split except `test` (train, valid, unlabeled; labels unused): the paper pretrains on separate unlabeled
video, and pretraining on the test inputs would be transductive. `pretrain_on_test=True` opts in to all
samples. The choice is recorded in ablation.json (`pretrain_splits`) and each pretraining run's config.json.

Every configuration is fine-tuned with the same seeds as `kebr eval`. A pretraining run is keyed by what
changes it (fusion, MCC on/off, g, form, alignment) and shared by every configuration that needs it.

Reruns: finished pretraining runs and fine-tuning seeds are reused when their identity (settings, data,
seeds; `kebr_core.runs`) matches, and a configuration whose runs hold other settings is refused with one
sentence naming it and the differing keys (`force` starts them afresh). A rerun with other flags adds
its configurations to ablation.json and results.csv; the configurations of earlier runs stay.

Shards (`kebr_core.shards`): `shard=(i, n)` runs only the configurations at positions k ≡ i (mod n) of
`specs` and writes no ablation.json/results.csv; a pretraining run that configurations of several shards
share is trained by the first to take its lock and reused by the others. A later call without a shard
aggregates (running what is missing); `collect=True` only aggregates, or names what has not finished.

"Avg" is the mean relative change over all metrics against C1, in percent: (m − m_C1)/|m_C1| · 100, with
MAE's sign reversed so that positive always means better.

Layout of the output directory: ablation.json (everything below, the contract `kebr analyze` reads),
results.csv, pretrain/<key>/ (pretraining runs), runs/<name>/ (fine-tuning runs).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kebr_core import runs
from kebr_core.config import RunConfig
from kebr_core.data.store import FeatureStore
from kebr_core.errors import KebrError
from kebr_core.metrics import METRIC_NAMES, STD_DDOF, split_summary
from kebr_core.recipes.finetune import finetune
from kebr_core.recipes.pretrain import pretrain, pretrain_identity
from kebr_core.shards import check_shard, in_shard, locked
from kebr_core.training import ProgressFn, no_progress

# g must lie in (−0.5, 0.5) (kebr_core.config): the sweep's ends are ±0.4.
DEFAULT_G_SWEEP = tuple(round(x, 1) for x in np.linspace(-0.4, 0.4, 9))
PRETRAIN_SPLITS_WITHOUT_TEST = ("train", "valid", "unlabeled")


@dataclass
class AblationSpec:
    """One configuration: which of the three components are on, and the MCC geometry."""

    name: str
    kind: str  # table4 | g-sweep | variant
    pretrain: bool = True
    tcmf: bool = True
    mcc: bool = True
    g: float = 0.2
    mcc_form: str = "paper"
    mcc_align: str = "tile"
    c3: str = "late"  # the fusion that replaces TCMF when tcmf is False: "late" or "symmetric"

    @property
    def fusion(self) -> str:
        return "tcmf" if self.tcmf else self.c3

    def pretrain_key(self) -> str:
        fusion = self.fusion
        if not self.mcc:  # λ = 0: the alignment changes only the cosines it logs
            return f"{fusion}-nomcc" if self.mcc_align == "tile" else f"{fusion}-nomcc-{self.mcc_align}"
        return f"{fusion}-mcc-g{self.g:+.2f}-{self.mcc_form}-{self.mcc_align}"


TABLE4 = (
    AblationSpec("C1", "table4"),
    AblationSpec("C2", "table4", pretrain=False),
    AblationSpec("C3", "table4", tcmf=False),
    AblationSpec("C4", "table4", mcc=False),
    AblationSpec("C5", "table4", pretrain=False, tcmf=False, mcc=False),
)


def build_specs(
    *, no_mcc: bool = False, no_tcmf: bool = False, no_pretrain: bool = False, all_table4: bool = False,
    g_sweep: Sequence[float] | None = None, mcc_forms: Sequence[str] = (), mcc_aligns: Sequence[str] = (),
    g: float = 0.2,
    align: str = "tile",
    form: str = "paper",
    c3: str = "late",
) -> list[AblationSpec]:
    """The configurations the flags ask for; C1 (the reference of "Avg") is always included.
    c3: the fusion of every configuration without TCMF ("late" or "symmetric", modules/fusion.py).

    g, align and form are those of every configuration outside the sweep and the comparisons
    (`mcc_forms`, `mcc_aligns`); a configuration without MCC still logs its cosines c_a, c_v with
    `align` (the balance plots compare them)."""
    if c3 not in C3_FUSIONS:
        raise KebrError(f"--c3 must be one of {', '.join(C3_FUSIONS)}, not '{c3}'.")
    specs = [replace(s, g=g, mcc_align=align, mcc_form=form, c3=c3) for s in TABLE4]
    chosen = [specs[0]]
    if all_table4:
        chosen = specs
    elif no_mcc or no_tcmf or no_pretrain:
        match = [s for s in specs if (not s.mcc) == no_mcc and (not s.tcmf) == no_tcmf and (not s.pretrain) == no_pretrain]
        if match:
            chosen.append(match[0])
        else:
            name = "+".join(n for n, on in (("no-pretrain", no_pretrain), ("no-tcmf", no_tcmf), ("no-mcc", no_mcc)) if on)
            chosen.append(AblationSpec(name, "table4", pretrain=not no_pretrain, tcmf=not no_tcmf, mcc=not no_mcc, g=g,
                                       mcc_form=form, mcc_align=align, c3=c3))
    for value in g_sweep or ():
        chosen.append(AblationSpec(f"g={value:+.2f}", "g-sweep", g=float(value), mcc_form=form, mcc_align=align))
    for other in mcc_forms:
        if other != form:
            chosen.append(AblationSpec(f"form={other}", "variant", g=g, mcc_form=other, mcc_align=align))
    for other in mcc_aligns:
        if other != align:
            chosen.append(AblationSpec(f"align={other}", "variant", g=g, mcc_form=form, mcc_align=other))
    return chosen


def apply_spec(base: RunConfig, spec: AblationSpec) -> RunConfig:
    """The RunConfig of one configuration: fusion, λ (0 without MCC) and the MCC geometry."""
    cfg = RunConfig.from_dict(base.to_dict())
    cfg.model.fusion = spec.fusion  # type: ignore[assignment]
    cfg.mcc.weight = base.mcc.weight if spec.mcc else 0.0
    cfg.mcc.g, cfg.mcc.form, cfg.mcc.align = spec.g, spec.mcc_form, spec.mcc_align  # type: ignore[assignment]
    return cfg


def has_both_streams(store_path: str | Path) -> bool:
    """Whether any sample has audio and vision frames (else MCC is undefined on the store)."""
    a, v = FeatureStore(store_path).lengths()
    return bool(((a > 0) & (v > 0)).any())


@dataclass
class AblationResult:
    out: Path
    rows: list[dict]
    seeds: list[int]
    notes: list[str] = field(default_factory=list)
    caption: str = ""  # what pretraining used (`pretraining_caption`)
    aggregated: bool = True  # False for a shard: `rows` are its own configurations, nothing summarised


def pretraining_caption(payload: dict) -> str:
    """One line saying what the ablation pretrained on, from ablation.json's fields (for results tables)."""
    store = payload.get("pretrain_store")
    if store is None:
        return "no pretraining"
    if payload.get("pretrain_splits") is not None:
        return f"pretrained on {', '.join(payload['pretrain_splits'])} of {store} (test inputs left out)"
    if payload.get("pretrain_on_test"):
        return f"pretrained on all of {store}, test inputs included (--pretrain-on-test)"
    return f"pretrained on all of {store}"


C3_FUSIONS = ("late", "symmetric")
C3_READINGS = {
    "late": "C3 = late fusion (no cross-modal network; kebr's first reading)",
    "symmetric": "C3 = symmetric cross-modal fusion of three equal streams (our reading of Table 4's caption)",
}


def c3_caption(rows: Sequence[dict]) -> str:
    """Which fusion(s) the rows without TCMF ran, for the table's caption ("" when none did)."""
    used = sorted({r.get("c3", "late") for r in rows if not r.get("tcmf", True)})
    return "; ".join(C3_READINGS[c] for c in used)


def relative_change(metrics: dict[str, float], reference: dict[str, float]) -> float:
    """Mean relative change over all metrics against the reference, in percent (MAE sign reversed)."""
    changes = []
    for k in METRIC_NAMES:
        m, r = metrics.get(k, np.nan), reference.get(k, np.nan)
        if np.isfinite(m) and np.isfinite(r) and r != 0:
            c = (m - r) / abs(r) * 100.0
            changes.append(-c if k == "mae" else c)
    return float(np.mean(changes)) if changes else float("nan")


def ablate(
    dataset_store: str | Path,
    pretrain_store: str | Path | None,
    out: str | Path,
    pretrain_cfg: RunConfig,
    finetune_cfg: RunConfig,
    specs: Sequence[AblationSpec],
    *,
    seeds: Sequence[int] | None = None,
    pretrain_on_test: bool = False,
    probe: bool = False,
    std: str = "sample",
    force: bool = False,
    shard: tuple[int, int] | None = None,
    collect: bool = False,
    progress: ProgressFn = no_progress,
    on_note: Callable[[str], None] = lambda note: None,
) -> AblationResult:
    """Run `specs` (see the module docstring) and write ablation.json and results.csv; configurations of
    earlier runs into `out` that this one does not name are kept (`force`: started afresh, earlier rows
    dropped). Fine-tuning seeds: `seeds`, default `finetune_cfg.train.seeds`. Without a pretraining store,
    pretraining uses the dataset's splits except test, or all of them with pretrain_on_test. probe: also
    test every configuration with a modality removed (`finetune`'s probe; each row's "probe"). std: the
    spread over seeds, "sample" (ddof = 1) or "population" (ddof = 0, MMSA's); ablation.json's std_ddof
    says which. shard, collect: the module docstring."""
    check_shard(shard, "--shard")
    if force and (shard is not None or collect):
        raise KebrError("--force cannot go with --shard or --collect: it would remove what other jobs finished; "
                        "start afresh with a plain --force run, then shard again.")
    if std not in STD_DDOF:
        raise KebrError(f"The std convention must be one of {', '.join(STD_DDOF)}, not {std!r}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds) if seeds is not None else list(finetune_cfg.train.seeds)
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        on_note(msg)

    pretrain_splits: list[str] | None = None  # None: every sample of the pretraining store
    if any(s.pretrain for s in specs) and pretrain_store is None:
        pretrain_store = dataset_store
        if pretrain_on_test:
            note(f"No pretraining store given: pretraining uses all samples of {dataset_store}, the test split's "
                 "inputs included (labels unused).")
        else:
            pretrain_splits = list(PRETRAIN_SPLITS_WITHOUT_TEST)
            note(f"No pretraining store given: pretraining uses the {', '.join(pretrain_splits)} samples of "
                 f"{dataset_store} (labels unused; the test split is left out).")
    mcc_defined = has_both_streams(dataset_store) and (pretrain_store is None or has_both_streams(pretrain_store))
    if not mcc_defined:
        note("MCC is undefined here: no sample has both audio and vision frames, so configurations that differ "
             "from another only in MCC are skipped.")

    earlier = [] if force else _earlier_rows(out, dataset_store)
    rows: list[dict] = []
    seen_without_mcc: dict[tuple, str] = {}
    forced: set[Path] = set()
    unfinished: list[str] = []  # with collect: the configurations not finished yet
    for n, spec in enumerate(specs):
        row = asdict(spec) | {"pretrain_dir": None, "eval_dir": f"{runs.ABLATION_RUNS}/{spec.name}", "status": "done",
                              "mean": {}, "std": {}, "avg_change": None}
        if not mcc_defined:
            twin = (spec.pretrain, spec.fusion)
            if twin in seen_without_mcc:
                row["status"] = f"skipped: identical to {seen_without_mcc[twin]} because MCC is undefined on this data"
                rows.append(row)
                continue
            seen_without_mcc[twin] = spec.name
        if not in_shard(n, shard):  # another job's
            continue
        if collect and (what := _unfinished(out, spec, seeds, probe)):
            unfinished.append(f"{spec.name} ({what})")
            continue
        try:
            checkpoint = None
            if spec.pretrain:
                pre_dir = out / runs.ABLATION_PRETRAIN / spec.pretrain_key()
                row["pretrain_dir"] = str(pre_dir.relative_to(out))
                # Shards may need the same pretraining at once: one trains it, the others wait and reuse it. Only
                # rank 0 of a DDP job locks (its ranks are one job; the others meet it inside `pretrain`).
                with locked(pre_dir / runs.LOCK, enabled=os.environ.get("RANK", "0") == "0"):
                    checkpoint = _pretrained(pretrain_store, pre_dir, apply_spec(pretrain_cfg, spec),  # type: ignore[arg-type]
                                             pretrain_splits, force and pre_dir not in forced, progress)
                forced.add(pre_dir)  # shared by configurations: started afresh once
            result = finetune(dataset_store, out / row["eval_dir"], apply_spec(finetune_cfg, spec), checkpoint=checkpoint,
                              seeds=seeds, probe=probe, std=std, force=force, collect=collect, progress=progress)
        except KebrError as e:
            raise KebrError(f"Configuration {spec.name}: {e}") from None
        row |= split_summary(result.summary)
        if probe:
            row["probe"] = {name: split_summary(stats) for name, stats in result.probe.items()}
        rows.append(row)
        progress("configurations", n + 1, len(specs), {})
    if unfinished:
        raise KebrError(f"Not every configuration in {out} has finished: {', '.join(unfinished)}; run the --shard "
                        "jobs that hold them (or kebr ablate without --collect), then collect again.")
    if shard is not None:  # ablation.json and results.csv come from the job that aggregates every configuration
        return AblationResult(out=out, rows=rows, seeds=seeds, notes=notes, aggregated=False)

    new = {r["name"]: r for r in rows}  # earlier configurations keep their place; this run's replace or follow them
    rows = [new.pop(r["name"], r) for r in earlier] + list(new.values())
    reference = next((r["mean"] for r in rows if r["name"] == "C1" and r["mean"]), None)
    for r in rows:
        r["avg_change"] = relative_change(r["mean"], reference) if reference is not None and r["mean"] else None
    payload = {
        "dataset": str(dataset_store), "pretrain_store": str(pretrain_store) if pretrain_store else None,
        "pretrain_splits": pretrain_splits,
        "pretrain_on_test": pretrain_on_test and str(pretrain_store) == str(dataset_store),
        "seeds": seeds, "std_ddof": STD_DDOF[std], "notes": notes, "configurations": rows,
    }
    runs.atomic_write_text(out / runs.ABLATION_JSON, json.dumps(payload, indent=2))
    with (out / runs.RESULTS_CSV).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "kind", "pretrain", "tcmf", "mcc", "g", "mcc_form", "mcc_align", "status",
                    *[f"{k}_mean" for k in METRIC_NAMES], *[f"{k}_std" for k in METRIC_NAMES], "std_ddof", "avg_change"])
        for r in rows:
            w.writerow([r["name"], r["kind"], r["pretrain"], r["tcmf"], r["mcc"], r["g"], r["mcc_form"], r["mcc_align"],
                        r["status"], *[r["mean"].get(k, "") for k in METRIC_NAMES],
                        *[r["std"].get(k, "") for k in METRIC_NAMES], STD_DDOF[std], r["avg_change"]])
    caption = "; ".join(filter(None, (pretraining_caption(payload), c3_caption(rows))))
    return AblationResult(out=out, rows=rows, seeds=seeds, notes=notes, caption=caption)


def _pretrained(store: str | Path, run_dir: Path, cfg: RunConfig, splits: list[str] | None, force: bool,
                progress: ProgressFn) -> Path:
    """The final/ checkpoint of a configuration's pretraining: reused when finished with the same identity
    (settings, store, splits), else trained (resumed from its latest checkpoint when there is one)."""
    final = run_dir / runs.FINAL
    if not force and (final / runs.WEIGHTS).exists():
        runs.check_identity(run_dir, pretrain_identity(store, cfg, splits))
        return final
    return pretrain(store, run_dir, cfg, splits=splits, resume_if_possible=True, force=force, progress=progress).checkpoint


def _unfinished(out: Path, spec: AblationSpec, seeds: Sequence[int], probe: bool) -> str:
    """What a configuration still lacks in `out` ("pretraining", "seeds 3, 4"), or "" when it has finished."""
    if spec.pretrain and not (out / runs.ABLATION_PRETRAIN / spec.pretrain_key() / runs.FINAL / runs.WEIGHTS).is_file():
        return "pretraining"
    missing = []
    for seed in seeds:
        done = runs.seed_dir(out / runs.ABLATION_RUNS / spec.name, seed) / runs.TEST_JSON
        if not done.is_file() or (probe and "probe" not in json.loads(done.read_text())):
            missing.append(str(seed))
    return f"seed(s) {', '.join(missing)}" if missing else ""


def _earlier_rows(out: Path, dataset_store: str | Path) -> list[dict]:
    """The configurations an earlier ablation into `out` recorded (their runs' identities are checked when
    they are named again); an ablation of another dataset there is refused."""
    path = out / runs.ABLATION_JSON
    if not path.is_file():
        return []
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        raise KebrError(f"{path} is not an ablation record; pass --force to start afresh or choose another --out.") from None
    if Path(str(earlier.get("dataset"))).resolve() != Path(dataset_store).resolve():
        raise KebrError(f"{out} holds an ablation of {earlier.get('dataset')}, not {dataset_store}; pass --force to start "
                        "it afresh or choose another --out.")
    return [r for r in earlier.get("configurations", []) if isinstance(r, dict) and "name" in r]

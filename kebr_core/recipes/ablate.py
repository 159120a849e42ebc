"""Recipe: the paper's ablations (§4.5, Table 4), the g-sweep (Fig. 4) and MCC variants (docs/design.md §8).

Configurations of Table 4:

    C1  pretraining + TCMF + MCC      (the full model, the reference row)
    C2  no pretraining                (fine-tune from the plain text encoder)
    C3  no TCMF                       (`c3`: "late", no cross-modal network, LateFusion; or "symmetric",
                                       three equal streams attending to each other, SymmetricFusion,
                                       our reading of Table 4's caption; the table's caption names it)
    C4  no MCC                        (λ = 0 in both stages)
    C5  none of the three

Pretraining data: the pretraining store (default: the dataset's own), by the rule `kebr pretrain`
applies (`recipes.pretrain.pretraining_data`): a store's test split is left out (train, valid, unlabeled;
labels unused), since pretraining on the test inputs would be transductive; `pretrain_on_test=True` opts
in. The choice is recorded in ablation.json (`pretrain_splits`) and each pretraining run's config.json.

Every configuration is fine-tuned with the same seeds as `kebr eval`. A pretraining run is keyed by what
changes it (fusion, MCC on/off, g, form, alignment) and shared by every configuration that needs it.

Pretraining seeds (`pretrain_seeds`, P of them; default the one `train.seed`): each configuration is
pretrained once per pretraining seed and each pretraining fine-tuned over the F seeds, P × F runs (layout:
`runs.pretrain_seed_runs`; P = 1 is the single-run layout). A configuration without pretraining does not
depend on the pretraining seed: it runs F times, and its results pair with every pretraining seed. Each
row's "values" holds its test metrics as (P, F) lists (1 × F without pretraining); with P ≥ 2 each row
also gets "vs_C1": the paired difference from C1 of DELTA_METRICS (`stats.paired_difference`), and
ablation.json's "vs_C1_interval" says what the intervals cover.

Reruns: finished pretraining runs and fine-tuning seeds are reused when their identity (settings, data,
seeds; `kebr_core.runs`) matches, and a configuration whose runs hold other settings is refused with one
sentence naming it and the differing keys (`force` starts them afresh). A rerun with other flags adds
its configurations to ablation.json and results.csv; the configurations of earlier runs stay.

Parts (`kebr_core.shards`): the items are the (configuration, pretraining seed) pairs in order (one item
per configuration without pretraining, or with P = 1); `shard=(i, n)` runs only the items at positions
k ≡ i (mod n) and writes no ablation.json/results.csv; a pretraining run that configurations of several
parts share is trained by the first to take its lock and reused by the others. A later call without a
part aggregates (running what is missing); `collect=True` only aggregates, or names what has not finished.

"Avg" is the mean relative change over all metrics against C1, in percent: (m − m_C1)/|m_C1| · 100, with
MAE's sign reversed so that positive always means better.

Layout of the output directory: ablation.json (everything above, the contract `kebr analyze` reads),
results.csv, pretrain/<key>/ (pretraining runs), runs/<name>/ (fine-tuning runs). The module stays one,
though over 400 lines, because it is one cohesive thing: the configurations, their runs and their record.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kebr_core import run_identity, runs
from kebr_core.config import RunConfig
from kebr_core.data.store import FeatureStore
from kebr_core.distributed import DistInfo, init_distributed, main_holds_lock, on_main
from kebr_core.errors import KebrError
from kebr_core.io import atomic_write_text, open_for_writing
from kebr_core.metrics import METRIC_NAMES, STD_DDOF, aggregate, split_summary
from kebr_core.recipes.compare import against_reference
from kebr_core.recipes.finetune import finetune
from kebr_core.recipes.pretrain import pretrain, pretrain_identity, pretraining_data
from kebr_core.results_files import in_file_unit, unit_column
from kebr_core.row_names import inputs_caption, store_inputs
from kebr_core.run_readers import seed_grids
from kebr_core.shards import check_part_run, in_part, locked, part_positions
from kebr_core.training import ProgressFn, no_progress, resolve_device

# g must lie in (−0.5, 0.5) (kebr_core.config): the sweep's ends are ±0.4.
DEFAULT_G_SWEEP = tuple(round(x, 1) for x in np.linspace(-0.4, 0.4, 9))
# The metrics of the paired differences vs C1 (tables' "Δ vs C1 [95 % CI]" columns), with two or more pretraining seeds.
DELTA_METRICS = ("mae", "acc2_non0")


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
    combined: bool = False,
    g_sweep: Sequence[float] | None = None, mcc_forms: Sequence[str] = (), mcc_aligns: Sequence[str] = (),
    g: float = 0.2,
    align: str = "tile",
    form: str = "paper",
    c3: str = "late",
) -> list[AblationSpec]:
    """The configurations the flags ask for; C1 (the reference of "Avg") is always included.
    Each of no_pretrain, no_tcmf, no_mcc adds its own configuration (C2, C3, C4); `combined` also adds the
    one with all the given factors removed at once (C5 for all three, else named like "no-pretrain+no-mcc").
    c3: the fusion of every configuration without TCMF ("late" or "symmetric", modules/fusion.py).

    g, align and form are those of every configuration outside the sweep and the comparisons
    (`mcc_forms`, `mcc_aligns`); a configuration without MCC still logs its cosines c_a, c_v with
    `align` (the balance plots compare them). The g-sweep's point at C1's g is C1 itself (same
    configuration): it is not added again, and `kebr analyze` draws C1 there."""
    if c3 not in C3_FUSIONS:
        raise KebrError(f"--c3 must be one of {', '.join(C3_FUSIONS)}, not '{c3}'.")
    specs = [replace(s, g=g, mcc_align=align, mcc_form=form, c3=c3) for s in TABLE4]
    by_factors = {(s.pretrain, s.tcmf, s.mcc): s for s in specs}  # what each keeps → its Table 4 configuration
    removed = {"no-pretrain": no_pretrain, "no-tcmf": no_tcmf, "no-mcc": no_mcc}
    chosen = specs if all_table4 else [specs[0]]
    if not all_table4:
        for n, on in enumerate(removed.values()):  # one factor removed each: C2, C3, C4
            if on:
                chosen.append(by_factors[tuple(k != n for k in range(3))])
    if combined and sum(removed.values()) >= 2:
        keep = (not no_pretrain, not no_tcmf, not no_mcc)
        combo = by_factors.get(keep) or AblationSpec(
            "+".join(name for name, on in removed.items() if on), "table4", pretrain=keep[0], tcmf=keep[1], mcc=keep[2],
            g=g, mcc_form=form, mcc_align=align, c3=c3)
        if combo not in chosen:
            chosen.append(combo)
    for value in g_sweep or ():
        if math.isclose(value, g, abs_tol=1e-9):  # C1's own configuration: C1 is this point of the sweep, not run twice
            continue
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
    pretrain_seeds: list[int] = field(default_factory=list)
    delta_caption: str = ""  # with two or more pretraining seeds: what the rows' "vs_C1" intervals cover
    inputs: str = ""  # the dataset store's streams (`row_names.store_inputs`), e.g. "text only"


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
    """Mean relative change over the reference's metrics (its dataset's set), in percent (MAE sign reversed)."""
    changes = []
    for k in reference:
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
    pretrain_seeds: Sequence[int] | None = None,
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
    dropped). Fine-tuning seeds: `seeds`, default `finetune_cfg.train.seeds`; pretraining seeds:
    `pretrain_seeds`, default `pretrain_cfg.train.seed` alone. Pretraining reads the pretraining store (default
    the dataset) without its test split, or all of it with pretrain_on_test. probe: also
    test every configuration with a modality removed (`finetune`'s probe; each row's "probe"). std: the
    spread over seeds, "sample" (ddof = 1) or "population" (ddof = 0, MMSA's); ablation.json's std_ddof
    says which. shard, collect: the module docstring."""
    check_part_run(shard, "--shard", collect=collect, force=force, items="configurations")
    if std not in STD_DDOF:
        raise KebrError(f"The std convention must be one of {', '.join(STD_DDOF)}, not {std!r}.")
    out = Path(out)
    # every configuration's runs share the disk text caches of one encoder and texts (kebr_core.text_cache)
    pretrain_cfg, finetune_cfg = (RunConfig.from_dict(c.to_dict()) for c in (pretrain_cfg, finetune_cfg))
    for c in (pretrain_cfg, finetune_cfg):
        c.train.text_cache_dir = c.train.text_cache_dir or str(out / runs.TEXT_CACHE)
    pseeds = [int(x) for x in pretrain_seeds] if pretrain_seeds is not None else [pretrain_cfg.train.seed]
    if not pseeds or len(set(pseeds)) != len(pseeds):
        raise KebrError(f"The pretraining seeds must be distinct and at least one, not {pseeds}.")
    # One job at a time in an ablation; shards claim their own (configuration, pretraining seed) items, the
    # positions they split (--collect only aggregates).
    n_items = sum(len(_items(out, spec, pseeds)) for spec in specs)
    my_items = part_positions(n_items, shard)
    # Under torchrun every rank runs this; rank 0 decides what is reused and alone writes (docs/design.md §6).
    info, _ = init_distributed(resolve_device(finetune_cfg.train.device))
    with runs.claim_run(out, my_items, enabled=info.is_main and not collect, check=runs.check_ablation_files):
        out.mkdir(parents=True, exist_ok=True)
        seeds = list(seeds) if seeds is not None else list(finetune_cfg.train.seeds)
        notes: list[str] = []

        def note(msg: str) -> None:
            notes.append(msg)
            on_note(msg)

        data = None  # which samples pretraining reads: the rule `kebr pretrain` applies too
        if any(s.pretrain for s in specs):
            pretrain_store = dataset_store if pretrain_store is None else pretrain_store
            data = pretraining_data(pretrain_store, on_test=pretrain_on_test)
            if data.note:
                note(data.note)
        pretrain_splits = data.splits if data is not None else None
        inputs = store_inputs(dataset_store)  # "text only" is named in the caption and the files
        mcc_defined = has_both_streams(dataset_store) and (pretrain_store is None or has_both_streams(pretrain_store))
        if not mcc_defined:
            note("MCC is undefined here: no sample has both audio and vision frames, so configurations that differ "
                 "from another only in MCC are skipped.")

        earlier = [] if force else _earlier_rows(out, dataset_store)
        rows: list[dict] = []
        seen_without_mcc: dict[tuple, str] = {}
        forced: set[Path] = set()
        unfinished: list[str] = []  # with collect: the configurations not finished yet
        position = 0  # of the next (configuration, pretraining seed) item: what shards split
        for n, spec in enumerate(specs):
            row = asdict(spec) | {"pretrain_dir": None, "eval_dir": f"{runs.ABLATION_RUNS}/{spec.name}", "status": "done",
                                  "pretrain_seeds": pseeds if spec.pretrain else [], "seeds": seeds,
                                  "mean": {}, "std": {}, "avg_change": None}
            items = _items(out, spec, pseeds)
            positions, position = range(position, position + len(items)), position + len(items)
            if spec.pretrain:
                row["pretrain_dir"] = f"{runs.ABLATION_PRETRAIN}/{spec.pretrain_key()}"
            if not mcc_defined:
                twin = (spec.pretrain, spec.fusion)
                if twin in seen_without_mcc:
                    row["status"] = f"skipped: identical to {seen_without_mcc[twin]} because MCC is undefined on this data"
                    rows.append(row)
                    continue
                seen_without_mcc[twin] = spec.name
            mine = [item for k, item in zip(positions, items) if in_part(k, shard)]
            if not mine:  # another job's
                continue
            if collect and (what := [w for item in items if (w := _unfinished(item, spec, seeds, probe))]):
                unfinished.append(f"{spec.name} ({'; '.join(what)})")
                continue
            results = []
            for pseed, pre_dir, eval_dir in mine:
                label = f"{spec.name}" + (f", pretraining seed {pseed}" if len(items) > 1 else "")
                try:
                    checkpoint = None
                    if pre_dir is not None:
                        pre_cfg = apply_spec(pretrain_cfg, spec)
                        pre_cfg.train.seed = pseed
                        # Shards may need the same pretraining at once: one trains it, the others wait and reuse it.
                        # A DDP job waits as one: rank 0 alone locks, and decides under the lock for every rank.
                        with locked(pre_dir / runs.LOCK, enabled=info.is_main, agree=main_holds_lock(info)):
                            checkpoint = _pretrained(pretrain_store, pre_dir, pre_cfg, pretrain_splits,  # type: ignore[arg-type]
                                                     force and pre_dir not in forced, progress, info)
                        forced.add(pre_dir)  # shared by configurations: started afresh once
                    results.append(finetune(dataset_store, eval_dir, apply_spec(finetune_cfg, spec), checkpoint=checkpoint,
                                            seeds=seeds, probe=probe, std=std, force=force, collect=collect, progress=progress))
                except KebrError as e:  # its kind kept: an error every DDP rank raises is still printed once
                    raise type(e)(f"Configuration {label}: {e}") from None
            if shard is not None:
                rows.append(row | {"name": ", ".join(
                    f"{spec.name}" + (f" (pretraining seed {pseed})" if len(items) > 1 else "") for pseed, _, _ in mine)})
                continue
            # Every (pretraining seed, fine-tuning seed) run of the configuration: P x F (1 x F without pretraining).
            every_run = [metrics for result in results for metrics in result.per_seed]
            row |= split_summary(aggregate(every_run, std))
            row["values"] = {k: [[metrics[k] for metrics in result.per_seed] for result in results] for k in every_run[0]}
            if probe:
                probes = [p for result in results for p in result.per_seed_probe]
                row["probe"] = {name: split_summary(aggregate([p[name] for p in probes], std)) for name in probes[0]}
            rows.append(row)
            progress("configurations", n + 1, len(specs), {})
        if unfinished:
            raise KebrError(f"Not every configuration in {out} has finished: {', '.join(unfinished)}; run the --shard "
                            "jobs that hold them (or kebr ablate without --collect), then collect again.")
        if shard is not None:  # ablation.json and results.csv come from the job that aggregates every configuration
            return AblationResult(out=out, rows=rows, seeds=seeds, notes=notes, aggregated=False)
        if not info.is_main:  # rank 0 of a DDP job writes the files
            return AblationResult(out=out, rows=rows, seeds=seeds, notes=notes, pretrain_seeds=pseeds)

        new = {r["name"]: r for r in rows}  # earlier configurations keep their place; this run's replace or follow them
        rows = [new.pop(r["name"], r) for r in earlier] + list(new.values())
        reference = next((r["mean"] for r in rows if r["name"] == "C1" and r["mean"]), None)
        for r in rows:
            r["avg_change"] = relative_change(r["mean"], reference) if reference is not None and r["mean"] else None
        payload = {
            "dataset": str(dataset_store), "pretrain_store": str(pretrain_store) if pretrain_store else None,
            "pretrain_splits": pretrain_splits, "pretrain_on_test": data.on_test if data is not None else False,
            "pretrain_seeds": pseeds, "seeds": seeds, "std_ddof": STD_DDOF[std], "inputs": inputs, "notes": notes,
            "configurations": rows,
        }
        atomic_write_text(out / runs.ABLATION_JSON, json.dumps(payload, indent=2))
        # With two or more pretraining seeds: each row's paired difference from C1, read back as `kebr compare`
        # and the forest plot read it (one pairing rule), then recorded with the rows.
        delta_caption = _paired_differences(out, rows) if len(pseeds) >= 2 else ""
        if delta_caption:
            payload = {**payload, "vs_C1_interval": delta_caption, "configurations": rows}
            atomic_write_text(out / runs.ABLATION_JSON, json.dumps(payload, indent=2))
        # With two or more pretraining seeds: the pretraining seeds and the paired differences vs C1 (DELTA_METRICS).
        # In the CSV files' unit (kebr_core.results_files): accuracies, F1 and their differences in percent.
        delta_columns = [unit_column(f"delta_{k}{end}", k) if end != "_p" else f"delta_{k}_p"
                         for k in DELTA_METRICS for end in ("", "_low", "_high", "_p")] if delta_caption else []

        def value(k: str, v):
            return in_file_unit(k, v) if isinstance(v, (int, float)) else ""

        names = next((list(r["mean"]) for r in rows if r["mean"]), list(METRIC_NAMES))  # the dataset's metric set
        with open_for_writing(out / runs.RESULTS_CSV, newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "kind", "inputs", "pretrain", "tcmf", "mcc", "g", "mcc_form", "mcc_align", "status",
                        *[unit_column(f"{k}_mean", k) for k in names], *[unit_column(f"{k}_std", k) for k in names],
                        "std_ddof", "avg_change_pct", *(["pretrain_seeds", *delta_columns] if delta_caption else [])])
            for r in rows:
                extra = []
                if delta_caption:
                    vs = r.get("vs_C1") or {}
                    extra = [" ".join(map(str, r.get("pretrain_seeds", []))),
                             *[(vs[k][x] if x == "p_value" else value(k, vs[k][x])) if k in vs else ""
                               for k in DELTA_METRICS for x in ("mean", "low", "high", "p_value")]]
                w.writerow([r["name"], r["kind"], inputs, r["pretrain"], r["tcmf"], r["mcc"], r["g"], r["mcc_form"],
                            r["mcc_align"], r["status"], *[value(k, r["mean"].get(k, "")) for k in names],
                            *[value(k, r["std"].get(k, "")) for k in names], STD_DDOF[std], r["avg_change"], *extra])
        caption = "; ".join(filter(None, (inputs_caption(inputs), pretraining_caption(payload), c3_caption(rows))))
        return AblationResult(out=out, rows=rows, seeds=seeds, notes=notes, caption=caption,
                              pretrain_seeds=pseeds, delta_caption=delta_caption, inputs=inputs)


def _paired_differences(out: Path, rows: list[dict]) -> str:
    """Set each row's "vs_C1" to its paired difference from C1 for each of DELTA_METRICS, computed as
    `kebr compare` does (`recipes.compare.against_reference` over `run_readers.seed_grids` of the written
    ablation: a configuration without pretraining pairs its F runs with every pretraining seed of C1; rows
    on other seeds are not paired and get none), and return what the intervals cover ("" without C1)."""
    grids = seed_grids(out)
    c1 = next((g for g in grids if g.name == "C1"), None)
    if c1 is None:
        return ""
    paired = {c.run.label: c for c in against_reference(grids, "C1")[0]}
    methods = set()
    for r in rows:
        r.pop("vs_C1", None)
        if r["name"] in paired:
            differences = paired[r["name"]].differences
            r["vs_C1"] = {k: differences[k].to_dict() for k in DELTA_METRICS}
            methods |= {differences[k].method for k in DELTA_METRICS}
    return (f"Δ vs C1: configuration − C1, paired over {len(c1.pretrain_seeds)} pretraining × {len(c1.finetune_seeds)} "
            f"fine-tuning seeds; 95 % interval: {'; '.join(sorted(methods)) or 'none (no other configuration)'}")


def _pretrained(store: str | Path, run_dir: Path, cfg: RunConfig, splits: list[str] | None, force: bool,
                progress: ProgressFn, info: DistInfo) -> Path:
    """The final/ checkpoint of a configuration's pretraining: reused when finished with the same identity
    (settings, store, splits), else trained (resumed from its latest checkpoint when there is one). Under
    DDP rank 0 decides and every rank follows (`on_main`): all of them train, or none."""
    final = run_dir / runs.FINAL

    def finished() -> bool:
        if force or not (final / runs.WEIGHTS).exists():
            return False
        run_identity.check_identity(run_dir, pretrain_identity(store, cfg, splits))
        return True

    if on_main(info, finished):
        return final
    return pretrain(store, run_dir, cfg, splits=splits, resume_if_possible=True, force=force, progress=progress).checkpoint


def _items(out: Path, spec: AblationSpec, pretrain_seeds: Sequence[int]) -> list[tuple[int, Path | None, Path]]:
    """(pretraining seed, pretraining run or None, fine-tuning run) of each run of a configuration
    (`runs.pretrain_seed_runs`): one per pretraining seed, one in all without pretraining (nothing there
    depends on the pretraining seed)."""
    evals = runs.pretrain_seed_runs(out / runs.ABLATION_RUNS / spec.name, pretrain_seeds if spec.pretrain else [0])
    if not spec.pretrain:
        return [(seed, None, run) for seed, run in evals]
    pres = runs.pretrain_seed_runs(out / runs.ABLATION_PRETRAIN / spec.pretrain_key(), pretrain_seeds)
    return [(seed, pre, run) for (seed, pre), (_, run) in zip(pres, evals)]


def _unfinished(item: tuple[int, Path | None, Path], spec: AblationSpec, seeds: Sequence[int], probe: bool) -> str:
    """What one run of a configuration still lacks ("pretraining", "seeds 3, 4"; with several pretraining
    seeds the seed is named), or "" when it has finished."""
    pseed, pre_dir, eval_dir = item
    which = f" of pretraining seed {pseed}" if eval_dir.name != spec.name else ""
    if pre_dir is not None and not (pre_dir / runs.FINAL / runs.WEIGHTS).is_file():
        return f"pretraining{which}"
    missing = []
    for seed in seeds:
        done = runs.seed_dir(eval_dir, seed) / runs.TEST_JSON
        if not done.is_file() or (probe and "probe" not in json.loads(done.read_text())):
            missing.append(str(seed))
    return f"seed(s) {', '.join(missing)}{which}" if missing else ""


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

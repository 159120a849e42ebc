"""`kebr ablate`: Table 4's configurations, the g-sweep and MCC variants, as one resumable command."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.table import Table

from kebr_cli.app import app, console, is_main_process, resume_command, user_errors
from kebr_cli.launcher import MasterAddr, MasterPort, NNodes, NodeRank, RdzvEndpoint, launch_wanted, relaunch_distributed
from kebr_cli.reporter import Reporter
from kebr_cli.extract import parse_shard
from kebr_cli.tables import ablation_table
from kebr_cli.threads import Threads, using_threads
from kebr_cli.options import (
    ConfigFile, DataDir, Force, NProc, Preset, PretrainOnTest, PrintConfig, ResultsTable, Set, Std, command_config,
    renamed_settings, seeds_option, with_settings,
)
from kebr_core.data.catalog import DATASET_HELP
from kebr_cli.train import check_choice, check_run_dir, print_config, store_if_present, trained_config
from kebr_core import results_files, runs
from kebr_core.metric_logger import require as require_reporters
from kebr_core.config import parse_seeds
from kebr_core.errors import KebrError
from kebr_core.io import check_output
from kebr_core.modules.mcc import ALIGNS, FORMS
from kebr_core.recipes.ablate import DEFAULT_G_SWEEP
from kebr_core.row_names import dataset_name
from kebr_core.shards import check_part_run
from kebr_core.strict import decimal_number


def _floats(text: str, option: str) -> list[float]:
    values = [decimal_number(x, allow_non_finite=False) for x in text.split(",") if x.strip()]
    if None in values:
        raise KebrError(f"{option} takes comma-separated finite numbers, e.g. -0.4,0,0.4, not '{text}'.")
    return values


ABLATE_ORDER = """ctx dataset pretrain_store pretrain_on_test pretrain_seeds out data_dir no_mcc no_tcmf c3 no_pretrain
    all_ combined g_sweep g_values compare_forms compare_aligns seeds g mcc_form mcc_align align s lambda_mcc
    shared_layers heads ffn attention_width head_hidden random_word modality_dropout dropped_modality max_text_len
    max_parameters dropout bf16 pretrain_epochs epochs batch_size lr lr_encoder lr_fusion text_model layers device
    loader_workers unfreeze freeze_encoder checkpoint_every keep_checkpoints checkpoint_every_steps
    checkpoint_every_minutes text_cache text_cache_dtype text_cache_dir nproc_per_node nnodes node_rank
    rdzv_endpoint master_addr master_port preset threads std probe config set_ print_config_ force
    results_table_path name as_json shard collect report_to"""  # help's order (kebr_cli.options.with_settings)


@app.command()
@with_settings("ablate", ABLATE_ORDER)
def ablate(
    ctx: typer.Context,
    dataset: str = typer.Option("synth", "--dataset", "-d", help=DATASET_HELP),
    pretrain_store: Optional[Path] = typer.Option(None, "--pretrain-store", "-p", help="Store to pretrain on (default: the dataset); as in kebr pretrain, its test split is left out (labels unused)."),
    pretrain_on_test: bool = PretrainOnTest,
    pretrain_seeds: Optional[str] = typer.Option(None, "--pretrain-seeds", callback=seeds_option, help="Pretraining seeds per configuration: a count (3 = 0..2) or a list; each pretraining is fine-tuned over --seeds (P x F runs), and with 2 or more the table gains paired differences vs C1 (default: one, --set train.seed)."),
    out: Path = typer.Option(Path("runs/ablate"), "--out", "-o", help="Output directory (ablation.json, results.csv, runs)."),
    data_dir: Optional[Path] = DataDir,
    no_mcc: bool = typer.Option(False, "--no-mcc", help="Add the configuration without MCC (λ = 0 in both stages; C4)."),
    no_tcmf: bool = typer.Option(False, "--no-tcmf", help="Add the configuration without TCMF (C3; its fusion: --c3)."),
    c3: str = typer.Option("late", "--c3", metavar="late|symmetric", help="What replaces TCMF in C3 (and C5): late (pooled streams fused at the end, no cross-modal network) or symmetric (our reading of Table 4's caption: the cross-modal network kept, three equal streams attending to each other). The table's caption names it."),
    no_pretrain: bool = typer.Option(False, "--no-pretrain", help="Add the configuration without pretraining (C2)."),
    all_: bool = typer.Option(False, "--all", help="All five configurations C1–C5 of Table 4."),
    combined: bool = typer.Option(False, "--combined", help="Also add the configuration with every given --no-* factor removed at once (C5 for all three; else named like no-pretrain+no-mcc). Without it each --no-* flag adds its own row."),
    g_sweep: bool = typer.Option(False, "--g-sweep", help="Sweep g over --g-values (Fig. 4); the point at --g is C1 itself, not trained twice."),
    g_values: str = typer.Option(",".join(f"{g:g}" for g in DEFAULT_G_SWEEP), "--g-values", help="g values of the sweep, each in (-0.5, 0.5)."),
    compare_forms: str = typer.Option("", "--compare-forms", help=f"Add a configuration per other MCC form, e.g. {','.join(FORMS)}."),
    compare_aligns: str = typer.Option("", "--compare-aligns", help=f"Add a configuration per other MCC alignment, e.g. {','.join(ALIGNS)}."),
    nproc_per_node: int = NProc, nnodes: int = NNodes, node_rank: int = NodeRank,
    rdzv_endpoint: Optional[str] = RdzvEndpoint, master_addr: Optional[str] = MasterAddr, master_port: int = MasterPort,
    preset: Optional[str] = Preset, threads: Optional[int] = Threads, std: str = Std,
    probe: bool = typer.Option(False, "--probe", help="Also test each configuration with audio or vision removed (zeroed, absent): how much each is used."),
    config: Optional[Path] = ConfigFile, set_: list[str] = Set, print_config_: bool = PrintConfig, force: bool = Force,
    results_table_path: Optional[Path] = ResultsTable,
    name: Optional[str] = typer.Option(None, "--name", help="What results-table.csv calls this ablation: its rows are 'NAME: C1', … (default: 'C1 (STORE)', … with the store's name)."),
    as_json: bool = typer.Option(False, "--json", help="Print ablation.json (every configuration's mean, std and Avg) as one JSON document on stdout instead of the table."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="i/n", help="Run only this job's share of the configurations: the k-th (from 0, in the table's order) belongs to shard k mod n, 0 <= i < n. Jobs may run at once on machines sharing --out; then --collect."),
    collect: bool = typer.Option(False, "--collect", help="Only aggregate the configurations finished in --out (by --shard jobs) into ablation.json; an error listing what has not finished."),
    **settings: Any,
) -> None:
    """Run the paper's ablations; finished configurations with the same settings are reused when rerun,
    and a rerun with more flags adds its configurations to the record. Training options, --config and
    --set apply to both stages, except --pretrain-epochs, --unfreeze and --checkpoint-every (pretraining)
    and --epochs, --lr-fusion, --freeze-encoder and --seeds (fine-tuning)."""
    from kebr_core.data.registry import resolve_dataset
    from kebr_core.recipes.ablate import ablate as run_ablate, apply_spec, build_specs

    if launch_wanted(nproc_per_node, nnodes) and not print_config_:
        raise relaunch_distributed(nproc_per_node, nnodes, node_rank, rdzv_endpoint, master_addr, master_port)
    with user_errors():
        for option, value in (("--mcc-form", settings["mcc_form"]), ("--mcc-align", settings["mcc_align"])):
            if value is not None and "," in value:  # the old spelling of the comparisons
                raise KebrError(f"{option} sets every configuration's value now (as in eval); to compare several, "
                                f"use --compare-{option.split('-')[-1]}s {value}.")
        renamed_settings(ctx)  # an old name: a note, or an error if both
        # Options of one stage (the declaration's Option.stage: --pretrain-epochs, --unfreeze, --epochs, …) set
        # that stage's configuration; the rest apply to both.
        cfgs = {stage: command_config(ctx, stage, preset=preset, config_file=config, sets=set_)
                for stage in ("pretrain", "finetune")}
        data_dir = data_dir or Path(os.environ.get("KEBR_DATA", "data"))
        if print_config_:
            present = {"finetune": store_if_present(dataset, data_dir)}
            present["pretrain"] = pretrain_store if pretrain_store is not None and pretrain_store.is_file() else present["finetune"]
            print_config({stage: trained_config(cfg, present[stage], None, {}) if present[stage] else cfg.to_dict()
                          for stage, cfg in cfgs.items()})
            return
        check_choice(std, ("sample", "population"), "--std")
        require_reporters(cfgs["finetune"].train.report_to)
        for name in [x for x in compare_forms.split(",") if x]:
            check_choice(name, FORMS, "--compare-forms")
        for name in [x for x in compare_aligns.split(",") if x]:
            check_choice(name, ALIGNS, "--compare-aligns")
        base = cfgs["finetune"].mcc
        geometry = {stage: (c.mcc.g, c.mcc.form, c.mcc.align) for stage, c in cfgs.items()}
        if geometry["pretrain"] != geometry["finetune"]:  # e.g. --preset authors: their stages differ
            pre, fine = (", ".join(f"{k} {v}" for k, v in zip(("g", "form", "align"), geometry[st]))
                         for st in ("pretrain", "finetune"))
            raise KebrError(f"kebr ablate gives both stages one MCC geometry, but the settings differ per stage "
                            f"(pretraining: {pre}; fine-tuning: {fine}); choose one with --g and --mcc-form "
                            "(and --mcc-align).")
        specs = build_specs(
            no_mcc=no_mcc, no_tcmf=no_tcmf, no_pretrain=no_pretrain, all_table4=all_, combined=combined,
            g_sweep=_floats(g_values, "--g-values") if g_sweep else None,
            mcc_forms=[x for x in compare_forms.split(",") if x], mcc_aligns=[x for x in compare_aligns.split(",") if x],
            g=base.g, align=base.align, form=base.form, c3=c3,
        )
        for spec in specs:  # every configuration's settings go through the same checks as eval/pretrain
            for stage_cfg in cfgs.values():
                apply_spec(stage_cfg, spec).validate(labels={"mcc.g": "--g-values" if spec.kind == "g-sweep" else "--g",
                                                             "mcc.form": "--compare-forms", "mcc.align": "--compare-aligns"})
        share = parse_shard(shard, "--shard")
        check_part_run(share, "--shard", collect=collect, force=force, items="configurations")  # before the data is resolved
        with Reporter(out) as report, using_threads(report, threads):
            store = resolve_dataset(dataset, data_dir, warn=report.warning)
            check_run_dir(out, store, pretrain_store, config)
            table_path = results_table_path or out.parent / runs.RESULTS_TABLE
            check_output(table_path, [store, pretrain_store, config], option="--results-table")
            result = run_ablate(store, pretrain_store, out, cfgs["pretrain"], cfgs["finetune"], specs,
                                pretrain_seeds=parse_seeds(pretrain_seeds) if pretrain_seeds is not None else None,
                                pretrain_on_test=pretrain_on_test, probe=probe, std=std, force=force,
                                shard=share, collect=collect, progress=report, on_note=report.note)
            if not result.aggregated:
                names = ", ".join(r["name"] for r in result.rows) or "none"
                report.result(f"shard {shard}: configuration(s) {names} finished in {out}. When every shard has "
                              f"finished: {resume_command('--collect', drop=('--shard',))}", to_stdout=not as_json)
                return
            if not is_main_process():  # rank 0 of a DDP job wrote the files; it alone reports
                return
            results_files.update_results_table(table_path, [
                results_files.ResultsRow(f"{name}: {r['name']}" if name else f"{r['name']} ({dataset_name(dataset)})", dataset,
                                         out / r["eval_dir"], result.seeds,
                                         {k: (r["mean"][k], r["std"][k]) for k in r["mean"]}, inputs=result.inputs)
                for r in result.rows if r["mean"]
            ])
            report.result(ablation_table(result.rows, list(result.seeds), width=console.width, std=std,
                                         note=result.caption, pretrain_seeds=result.pretrain_seeds,
                                         delta_caption=result.delta_caption), to_stdout=not as_json)
            if probe:
                report.result(probe_table(result.rows, std), to_stdout=not as_json)
            for r in result.rows:
                if not r["mean"]:
                    report.note(f"{r['name']} {r['status']}")
            report.result(f"results: [bold]{out / runs.ABLATION_JSON}[/], {out / runs.RESULTS_CSV}; across runs: "
                          f"{table_path}   log: {report.log_path}   plots: kebr analyze {out}", to_stdout=not as_json)
    if as_json and is_main_process():
        typer.echo(json.dumps({"out": str(out)} | json.loads((out / runs.ABLATION_JSON).read_text()), indent=2))


def std_words(std: str) -> str:
    return {"sample": "sample std (ddof=1)", "population": "population std (ddof=0)"}[std]


def probe_table(rows: list[dict], std: str = "sample") -> Table:
    """Test MAE and Acc-2 (non0) of each configuration with all streams and with one removed (mean ± std):
    MAE ± std over Acc-2 in each cell and no vertical rules, so five columns fit 80 without cutting a number
    (only a long configuration name wraps, inside its cell)."""
    table = Table(title=f"Modality removed at test time (test split, mean ± {std_words(std)} over seeds)",
                  box=box.SIMPLE_HEAD)
    names = [name for r in rows if r.get("probe") for name in r["probe"]][:4]
    table.add_column("config", overflow="fold", min_width=6)
    for name in ["all streams", *names]:
        table.add_column(f"{name.replace(' ', chr(10))}\nMAE / Acc-2", justify="right", no_wrap=True)

    def cell(mean: dict, std: dict) -> str:
        return f"{mean['mae']:.3f}±{std['mae']:.3f}\n{100 * mean['acc2_non0']:.1f}"

    for r in rows:
        if r.get("probe"):
            table.add_row(r["name"].replace("+", "+\n"), cell(r["mean"], r["std"]),
                          *[cell(r["probe"][n]["mean"], r["probe"][n]["std"]) for n in names])
    return table

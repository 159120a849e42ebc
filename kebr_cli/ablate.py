"""`kebr ablate`: Table 4's configurations, the g-sweep and MCC variants, as one resumable command."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from kebr_cli.app import app, console, number, progress, user_errors
from kebr_cli.train import _choice, _renderer, build_config
from kebr_core.config import DEFAULT_TEXT_MODEL
from kebr_core.errors import KebrError
from kebr_core.metrics import format_table_row


def _floats(text: str, option: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = [math.nan]
    if not all(math.isfinite(v) for v in values):
        raise KebrError(f"{option} takes comma-separated finite numbers, e.g. -0.5,0,0.5, not '{text}'.")
    return values


@app.command()
def ablate(
    dataset: str = typer.Option("synth", "--dataset", "-d", help="mosi, mosei, synth, or the path of a labeled store."),
    pretrain_store: Optional[Path] = typer.Option(None, "--pretrain-store", "-p", help="Store to pretrain on, all its samples (default: the dataset's train, valid and unlabeled samples; labels unused)."),
    pretrain_on_test: bool = typer.Option(False, "--pretrain-on-test", help="Without --pretrain-store, pretrain on the test split's inputs too (transductive; labels still unused)."),
    out: Path = typer.Option(Path("runs/ablate"), "--out", "-o", help="Output directory (ablation.json, results.csv, runs)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where mosi/mosei data lives (default: $KEBR_DATA or ./data)."),
    no_mcc: bool = typer.Option(False, "--no-mcc", help="Add the configuration without MCC (λ = 0 in both stages; C4)."),
    no_tcmf: bool = typer.Option(False, "--no-tcmf", help="Add the configuration without TCMF (late fusion; C3)."),
    no_pretrain: bool = typer.Option(False, "--no-pretrain", help="Add the configuration without pretraining (C2)."),
    all_: bool = typer.Option(False, "--all", help="All five configurations C1–C5 of Table 4."),
    g_sweep: bool = typer.Option(False, "--g-sweep", help="Sweep g over --g-values (Fig. 4)."),
    g_values: str = typer.Option("-0.5,-0.4,-0.3,-0.2,-0.1,0,0.1,0.2,0.3,0.4,0.5", "--g-values", help="g values of the sweep."),
    mcc_form: str = typer.Option("", "--mcc-form", help="Compare MCC forms, e.g. paper,reference,mean-cosine."),
    mcc_align: str = typer.Option("", "--mcc-align", help="Compare MCC alignments, e.g. tile,authors,projected."),
    seeds: int = typer.Option(5, "--seeds", min=1, help="Fine-tuning seeds per configuration (as eval)."),
    g: float = typer.Option(0.2, "--g", help="g of every configuration outside the sweep."),
    align: str = typer.Option("tile", "--align", help="MCC alignment of every configuration outside --mcc-align "
                              "(tile, authors or projected); a configuration without MCC logs its cosines with it."),
    pretrain_epochs: Optional[int] = typer.Option(None, "--pretrain-epochs", min=1, help="Pretraining epochs (default 20)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Fine-tuning epochs (default 10)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    lr_fusion: Optional[float] = typer.Option(None, "--lr-fusion", parser=number(0, low_open=True), help="Fine-tuning learning rate of TCMF (default 5e-6, the authors'; pretraining uses 1e-4)."),
    text_model: str = typer.Option(DEFAULT_TEXT_MODEL, "--text-model", help="Text encoder (name or folder)."),
    layers: int = typer.Option(4, "--layers", min=1, help="TCMF layers K."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Keep the encoder frozen while fine-tuning (faster)."),
    std: str = typer.Option("sample", "--std", help="Spread over seeds: sample (ddof=1, default) or population (ddof=0, MMSA's np.std)."),
    probe: bool = typer.Option(False, "--probe", help="Also test each configuration with audio or vision removed (zeroed, absent): how much each is used."),
) -> None:
    """Run the paper's ablations; finished configurations are skipped when rerun."""
    from kebr_core.data.registry import resolve_dataset
    from kebr_core.modules.mcc import ALIGNS, FORMS
    from kebr_core.recipes.ablate import ablate as run_ablate, build_specs

    common = dict(text_model=text_model, g=g, s=1.0, lambda_mcc=1.0, mcc_form="paper", mcc_align=align, layers=layers,
                  shared_layers=True, heads=1, ffn="mlp", batch_size=batch_size, lr=None, lr_encoder=None,
                  max_text_len=50, seed=0, device=device, workers=None, bf16=None)
    with user_errors():
        _choice(align, ALIGNS, "--align")
        _choice(std, ("sample", "population"), "--std")
        for name in [x for x in mcc_form.split(",") if x]:
            _choice(name, FORMS, "--mcc-form")
        for name in [x for x in mcc_align.split(",") if x]:
            _choice(name, ALIGNS, "--mcc-align")
        pre_cfg = build_config(None, "pretrain", epochs=pretrain_epochs, checkpoint_every=5, unfreeze=False,
                               lr_fusion=None, **common)
        ft_cfg = build_config(None, "finetune", epochs=epochs, checkpoint_every=1, unfreeze=not freeze_encoder,
                              lr_fusion=lr_fusion, **common)
        specs = build_specs(
            no_mcc=no_mcc, no_tcmf=no_tcmf, no_pretrain=no_pretrain, all_table4=all_,
            g_sweep=_floats(g_values, "--g-values") if g_sweep else None,
            mcc_forms=[x for x in mcc_form.split(",") if x], mcc_aligns=[x for x in mcc_align.split(",") if x], g=g,
            align=align,
        )
        data_dir = data_dir or Path(os.environ.get("KEBR_DATA", "data"))
        store = resolve_dataset(dataset, data_dir, warn=lambda m: console.print(f"[yellow]warning:[/] {m}"))
        with progress() as prog:
            result = run_ablate(store, pretrain_store, out, pre_cfg, ft_cfg, specs, seeds=list(range(seeds)),
                                pretrain_on_test=pretrain_on_test, probe=probe, std=std,
                                progress=_renderer(prog, {}),
                                on_note=lambda m: console.print(f"[yellow]note:[/] {m}"))
    console.print(ablation_table(result.rows, result.caption, std))
    if probe:
        console.print(probe_table(result.rows, std))
    console.print(f"results: [bold]{out / 'ablation.json'}[/], {out / 'results.csv'}   plots: kebr analyze {out}")


def ablation_table(rows: list[dict], caption: str = "", std: str = "sample") -> Table:
    """Table 4's shape: configuration, its components, the metrics (mean ± std) and Avg; the caption says
    what pretraining used."""
    table = Table(title=f"Ablation (test split, mean ± {std_words(std)} over seeds; Avg = mean relative change vs C1, %)",
                  caption=caption or None)
    for col in ("config", "pretrain", "TCMF", "MCC", "g", "Acc-2", "F1", "Acc-7", "MAE", "Corr", "Avg"):
        table.add_column(col, justify="right" if col not in ("config",) else "left")
    mark = {True: "✓", False: "✗"}
    for r in rows:
        if not r["mean"]:
            table.add_row(r["name"], mark[r["pretrain"]], mark[r["tcmf"]], mark[r["mcc"]], f"{r['g']:+.2f}",
                          r["status"], "", "", "", "", "")
            continue
        cells = format_table_row({k: (r["mean"][k], r["std"][k]) for k in r["mean"]})
        avg = "" if r["avg_change"] is None else f"{r['avg_change']:+.2f}"
        table.add_row(r["name"], mark[r["pretrain"]], mark[r["tcmf"]], mark[r["mcc"]], f"{r['g']:+.2f}",
                      cells["Acc-2"], cells["F1"], cells["Acc-7"], cells["MAE"], cells["Corr"], avg)
    return table


def std_words(std: str) -> str:
    return {"sample": "sample std (ddof=1)", "population": "population std (ddof=0)"}[std]


def probe_table(rows: list[dict], std: str = "sample") -> Table:
    """Test MAE and Acc-2 (non0) of each configuration with all streams and with one removed (mean ± std)."""
    table = Table(title=f"Modality removed at test time (test split, mean ± {std_words(std)} over seeds)")
    names = [name for r in rows if r.get("probe") for name in r["probe"]][:4]
    table.add_column("config")
    for name in ["all streams", *names]:
        table.add_column(f"{name}\nMAE / Acc-2", justify="right")

    def cell(mean: dict, std: dict) -> str:
        return f"{mean['mae']:.3f}±{std['mae']:.3f} / {100 * mean['acc2_non0']:.1f}"

    for r in rows:
        if r.get("probe"):
            table.add_row(r["name"], cell(r["mean"], r["std"]),
                          *[cell(r["probe"][n]["mean"], r["probe"][n]["std"]) for n in names])
    return table

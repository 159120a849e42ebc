"""`kebr export RUN -o DIR [--push-to-hub REPO_ID]`: a run's model as a self-contained folder
(kebr_core.recipes.export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from kebr_cli.app import app, console, user_errors


@app.command()
def export(
    run: Path = typer.Argument(..., help="A `kebr eval` run (exports its best-model/), a `kebr pretrain` run (its final/), or a model folder."),
    out: Path = typer.Option(..., "--out", "-o", help="The folder to write: the model, config.json, text-encoder/ (tokenizer and encoder) and a README.md model card."),
    force: bool = typer.Option(False, "--force", help="Replace the --out folder when it already holds a kebr model."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", metavar="REPO_ID", help="Also upload the folder to this Hugging Face Hub model repository (owner/name; needs the network and `hf auth login` or HF_TOKEN)."),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repository as private."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written (folder, files, size, Hub commit) as one JSON document."),
) -> None:
    """Write a run's model as a folder that loads on any machine: the text encoder is inside whatever its
    name, with the tokenizer and a model card (data, configuration, test metrics over seeds). Load it with
    `kebr predict --model DIR` or `KEBRModel.from_pretrained("DIR")`."""
    from kebr_core.recipes.export import export as run_export

    with user_errors():
        result = run_export(run, out, force=force, push_to_hub=push_to_hub, private=private)
    if as_json:
        typer.echo(json.dumps({"source": str(result.source), "out": str(result.out), "stage": result.stage,
                               "files": result.files, "size_bytes": result.size_bytes, "pushed": result.pushed}, indent=2))
        return
    what = "fine-tuned model" if result.stage == "finetune" else "pretraining checkpoint"
    console.print(f"exported the {what} {result.source} to [bold]{result.out}[/] ({len(result.files)} files, "
                  f"{result.size_bytes / 1e6:.1f} MB)", highlight=False, soft_wrap=True)
    if result.pushed:
        console.print(f"pushed to the Hub: {result.pushed}", highlight=False, soft_wrap=True)

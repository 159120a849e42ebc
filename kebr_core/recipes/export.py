"""Recipe: a run's model as a self-contained folder to hand on (`kebr export RUN -o DIR [--push-to-hub REPO_ID]`).

    export("runs/eval", "share/kebr-mosi")                       # best-model/ of an evaluation run
    export("runs/pretrain", "share/kebr-pre", push_to_hub="me/kebr-pre")

RUN is an evaluation run (its best-model/: the seed with the lowest validation MAE), a pretraining run
(its final/), or a model folder itself; for a folder of pseed-S/ runs, an ablation or a search, the
refusal names the run to give instead. The folder is written by `model.save_pretrained` with
`store_encoder=True`: the text encoder is inside whatever its name (a name that resolves on this machine
may not on the receiver's), with the tokenizer and a model card made from the run (its results.json:
test metrics over the seeds). Like every model folder it is written as `DIR.tmp` and renamed into place
(`checkpoints.save_checkpoint`): a kill leaves DIR as it was, never half-written. An existing DIR is replaced
only with `force` and only when it is a kebr model folder; DIR may not be, or lie inside, the model it
exports.

`push_to_hub`: the finished folder is uploaded to that Hugging Face Hub model repository (created when
missing) with huggingface_hub's `HfApi.upload_folder`, as one commit. It needs the network and a login
(`hf auth login`, or HF_TOKEN); a failed upload is one sentence and leaves the exported folder complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kebr_core import checkpoints, runs
from kebr_core.errors import KebrError
from kebr_core.io import check_output, refuse_links
from kebr_core.own_files import RECORD
from kebr_core.model import REPO_ID, load_pretrained, save_pretrained


@dataclass
class ExportResult:
    source: Path  # the model folder exported
    out: Path  # the folder written
    stage: str  # "finetune" or "pretrain"
    files: list[str]  # the files written, relative to `out`
    size_bytes: int
    pushed: str | None = None  # the Hub commit's URL with push_to_hub


def is_model_folder(folder: Path) -> bool:
    """Whether `folder` holds a kebr model: model.safetensors and a config.json kebr wrote for it."""
    cfg = Path(folder) / runs.CONFIG
    if not (Path(folder) / runs.WEIGHTS).is_file() or not cfg.is_file():
        return False
    try:
        payload = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(payload, dict) and "includes_encoder" in payload


def model_source(run: str | Path) -> tuple[Path, Path | None]:
    """(the model folder of `run`, the run directory whose results its card shows, or None)."""
    run = Path(run)
    if not run.exists():
        raise KebrError(f"{run} does not exist; give a kebr eval or kebr pretrain run directory, or a model folder.")
    for name in (runs.BEST_MODEL, runs.FINAL):
        checkpoints.recover_folder(run / name)  # a kill inside a save left <name>.old
        if is_model_folder(run / name):
            return run / name, run
    if is_model_folder(run):
        return run, run.parent if runs.is_kebr_run(run.parent) else None
    if runs.run_pretrain_seeds(run):
        raise KebrError(f"{run} holds one run per pretraining seed (pseed-S/); export one of them, e.g. "
                        f"kebr export {runs.pretrain_seed_dir(run, runs.run_pretrain_seeds(run)[0])} -o DIR.")
    if (run / runs.BEST_EVAL).is_dir():
        raise KebrError(f"{run} is a search (kebr tune); export its evaluation of the best configuration: "
                        f"kebr export {run / runs.BEST_EVAL} -o DIR.")
    if (run / runs.ABLATION_JSON).is_file():
        raise KebrError(f"{run} is an ablation; export one configuration's run, e.g. kebr export {run / runs.ABLATION_RUNS}/C1 -o DIR.")
    raise KebrError(f"{run} is not a kebr run or model folder: it holds no {runs.BEST_MODEL}/ (kebr eval), no "
                    f"{runs.FINAL}/ (kebr pretrain) and no {runs.WEIGHTS} with a kebr {runs.CONFIG}.")


def check_export_target(out: Path, source: Path, run: Path, force: bool) -> None:
    """The write rules for DIR: not the model exported nor inside it, never through a link, replaced only
    with `force` and only when it is a kebr model folder (kebr overwrites only its own files)."""
    check_output(out, [run, source], option="-o", folder=True)
    resolved = out.resolve()
    if resolved == source.resolve() or source.resolve() in resolved.parents:
        raise KebrError(f"-o {out} is inside the model it exports ({source}); choose a folder elsewhere.")
    if out.is_symlink():
        raise KebrError(f"-o {out} is a symbolic link; kebr does not write through links: choose another folder.")
    if out.exists():
        if not force:
            raise KebrError(f"-o {out} already exists; pass --force to replace it, or choose another folder.")
        if not is_model_folder(out):
            raise KebrError(f"-o {out} exists and is not a kebr model folder; kebr overwrites only its own files: "
                            "choose another folder (or remove it).")
        refuse_links(out.parent, [out.name])


def push_folder(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload `folder` to the Hub model repository `repo_id` (created when missing) as one commit; the
    commit's URL. Any failure (offline, no login, no access) is one sentence."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        repo = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), repo_type="model", folder_path=str(folder),
                                 commit_message="Upload a KEBR model exported by kebr",
                                 ignore_patterns=[RECORD])  # this machine's record of what kebr wrote here
    except Exception as e:  # OfflineModeIsEnabled, HTTP errors, missing token: the user's to fix
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KebrError(f"Uploading {folder} to the Hub repository {repo_id} failed ({first[:200]}); the exported "
                        "folder is complete: rerun with --force --push-to-hub once online and logged in (hf auth login).") from None
    return str(getattr(info, "commit_url", info))


def export(run: str | Path, out: str | Path, *, force: bool = False, push_to_hub: str | None = None,
           private: bool = False) -> ExportResult:
    """Write the model of `run` as a self-contained folder `out` (module docstring); upload it with push_to_hub."""
    run, out = Path(run), Path(out)
    if push_to_hub is not None and not REPO_ID.fullmatch(push_to_hub):
        raise KebrError(f"--push-to-hub {push_to_hub!r} is not a Hub repository id; give owner/name, e.g. me/kebr-mosi.")
    source, run_dir = model_source(run)
    check_export_target(out, source, run, force)
    model = load_pretrained(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_pretrained(model, out, store_encoder=True, tokenizer=model.tokenizer, run_dir=run_dir)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != RECORD)
    stage = "finetune" if model.checkpoint_config.get("features") else "pretrain"
    result = ExportResult(source=source, out=out, stage=stage, files=files,
                          size_bytes=sum((out / f).stat().st_size for f in files))
    if push_to_hub is not None:
        result.pushed = push_folder(out, push_to_hub, private)
    return result

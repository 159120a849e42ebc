"""Checkpoints: model folders (final/, best-model/) and resume checkpoints (checkpoints/epoch-NNNN/ and
the `latest` pointer), written crash-safely, found, checked and loaded (docs/design.md §6; the names are
`runs.py`'s, the validation of the files `checkpoint_files.py`'s).

Crash safety. A checkpoint is written as `<name>.tmp/`, its files fsynced, and renamed into place; the
`latest` pointer is replaced atomically (write, fsync, `os.replace`) only after that, and older epoch
folders are removed only after the pointer moved. A kill -9 at any point leaves `latest` naming a
complete checkpoint (the new or the previous one). Trainer state holds only tensors, numbers and plain
containers and is loaded with `torch.load(weights_only=True, map_location="cpu")`: a crafted file
cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import save_file
from torch import Tensor

from kebr_core import checkpoint_files
from kebr_core.config import RunConfig
from kebr_core.errors import KebrError
from kebr_core.io import atomic_write_text, fsync_dir, fsync_file
from kebr_core.own_files import refuse_link_on_the_way, remove_written, remove_written_or_refuse, write_record
from kebr_core.runs import (
    BEST_MODEL, CHECKPOINTS, CONFIG, EPOCH_DIR, EPOCH_TMP, FINAL, LATEST, MODEL_FOLDER_FILES, TRAINER_STATE, WEIGHTS,
    epoch_dir,
)


def _write_checkpoint_files(folder: Path, weights: Mapping[str, Tensor], payload: Mapping[str, Any],
                            trainer_state: Mapping[str, Any] | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(dict(weights), str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(payload, indent=2, default=str))
    if trainer_state is not None:
        torch.save(dict(trainer_state), folder / TRAINER_STATE)
    for f in folder.iterdir():
        fsync_file(f)
    fsync_dir(folder)


def model_weights(model: torch.nn.Module, include_encoder: bool) -> dict[str, Tensor]:
    """The model's weights on the CPU, without the encoder when it was frozen (it is reloaded by name)."""
    state = model.state_dict()
    if not include_encoder:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def checkpoint_payload(cfg: RunConfig, include_encoder: bool, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint's config.json: the configuration, whether the encoder is inside, and `extra`."""
    return cfg.to_dict() | {"includes_encoder": include_encoder} | dict(extra or {})


def save_checkpoint(path: Path, model: torch.nn.Module, cfg: RunConfig, include_encoder: bool,
                    extra: dict[str, Any] | None = None, write_more: Callable[[Path], None] | None = None) -> None:
    """A model folder (final/, best-model/): model.safetensors + config.json, replaced crash-safely:
    written as `<path>.tmp`, the old folder moved to `<path>.old` and back by `recover_folder` if a kill
    comes between the two renames. write_more(tmp): the other files of the folder (tokenizer, encoder,
    model card: `model.save_pretrained`), written into it before it is fsynced and renamed."""
    path = Path(path)
    recover_folder(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    for leftover in (tmp, old):  # kebr's own, from a kill; anything else in them is refused, not removed
        remove_written_or_refuse(leftover, MODEL_FOLDER_FILES, path.parent, f"to save {path}")
    _write_checkpoint_files(tmp, model_weights(model, include_encoder), checkpoint_payload(cfg, include_encoder, extra), None)
    if write_more is not None:
        write_more(tmp)
        for written in sorted(tmp.rglob("*"), reverse=True):  # files before the folders holding them
            fsync_dir(written) if written.is_dir() else fsync_file(written)
        fsync_dir(tmp)
    write_record(tmp)  # last: what a later removal of this folder may take (`own_files`)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    remove_written(old, MODEL_FOLDER_FILES, path.parent)  # a file someone put into the old folder stays, in <path>.old


def recover_folder(path: Path) -> None:
    """After a kill inside `save_checkpoint`: put `<path>.old` back when `<path>` is missing."""
    old = path.with_name(path.name + ".old")
    if old.exists() and not path.exists():
        os.replace(old, path)
    elif old.exists():
        remove_written(old, MODEL_FOLDER_FILES, path.parent)


def save_resume_checkpoint(run_dir: Path, epoch: int, weights: Mapping[str, Tensor], payload: Mapping[str, Any],
                           trainer_state: Mapping[str, Any], keep: int = 0, step: int = 0) -> Path:
    """checkpoints/epoch-NNNN/ with trainer state, then the `latest` pointer, then retention (`keep` newest
    epoch folders; 0 keeps all). Every step leaves `latest` naming a complete checkpoint.

    step > 0: a mid-epoch checkpoint, `step` steps into epoch `epoch` (checkpoints/epoch-NNNN-step-SSSSSSSS/,
    its trainer state with "step" and the epoch's position: `kebr_core.resume`); it is kept only while it
    is the latest (a later checkpoint supersedes it)."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    refuse_link_on_the_way(root, run_dir)  # checked at the start too; a link made since is not written through
    target = epoch_dir(run_dir, epoch) if not step else epoch_dir(run_dir, epoch).with_name(
        f"{epoch_dir(run_dir, epoch).name}-step-{step:08d}")
    tmp = target.with_name(target.name + ".tmp")
    purpose = f"to save checkpoint {target.name}"
    remove_written_or_refuse(tmp, MODEL_FOLDER_FILES, run_dir, purpose)
    _write_checkpoint_files(tmp, weights, payload, dict(trainer_state) | {"epoch": epoch} | ({"step": step} if step else {}))
    write_record(tmp)  # last: what retention and --force may later remove (`own_files`)
    current = latest_checkpoint(run_dir)
    if target.exists() and target != current:  # left by a run killed before its pointer moved: stale
        remove_written_or_refuse(target, MODEL_FOLDER_FILES, run_dir, purpose)
    if target.exists():  # the same epoch saved again (its content is the same state): keep the one there
        remove_written(tmp, MODEL_FOLDER_FILES, run_dir)
    else:
        os.replace(tmp, target)
        fsync_dir(root)
    atomic_write_text(root / LATEST, target.name + "\n")
    _apply_retention(root, target, keep)
    return target


def _apply_retention(root: Path, latest: Path, keep: int) -> None:
    """Remove checkpoints left half-written by a kill, mid-epoch checkpoints a later one superseded, and all
    but the `keep` newest epoch folders (0: none), by kebr's own names only (`own_files`: a foreign file
    keeps its folder, `important.tmp` is no checkpoint)."""
    run_dir = root.parent
    for stray in root.iterdir():  # left by a kill before a rename
        if EPOCH_TMP.fullmatch(stray.name):
            remove_written(stray, MODEL_FOLDER_FILES, inside=run_dir)
    folders = sorted((p for p in root.iterdir() if EPOCH_DIR.fullmatch(p.name) and p.is_dir() and not p.is_symlink()),
                     key=lambda p: p.name)
    for old in folders:  # a mid-epoch checkpoint is superseded by any later one
        if old != latest and EPOCH_DIR.fullmatch(old.name).group(2) is not None:
            remove_written(old, MODEL_FOLDER_FILES, inside=run_dir)
    folders = [p for p in folders if p.exists()]
    for old in (folders[:-keep] if keep > 0 else []):
        if old != latest:
            remove_written(old, MODEL_FOLDER_FILES, inside=run_dir)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names (complete by construction), or None when there is none. The pointer
    must name an epoch-NNNN folder of checkpoints/ (not a path: `../../..` or /elsewhere is refused)."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        name = "(not text)"
    if not EPOCH_DIR.fullmatch(name):
        raise KebrError(f"{pointer} names {name[:80]!r}, not an epoch-NNNN folder of {pointer.parent}; the run cannot be "
                        "resumed (start it afresh with --force).")
    folder = pointer.parent / name
    if folder.is_symlink() or (folder / TRAINER_STATE).is_symlink():
        raise KebrError(f"{folder} is a symbolic link; a checkpoint is a folder of the run itself, so the run cannot be resumed.")
    if not (folder / TRAINER_STATE).is_file():
        raise KebrError(f"{pointer} names {folder.name}, which holds no {TRAINER_STATE}; the run cannot be resumed.")
    return folder


def load_trainer_state(folder: Path, max_epoch: int | None = None) -> dict[str, Any]:
    """A checkpoint's trainer state, loaded to the CPU with weights_only=True: only tensors, numbers and
    plain containers are accepted, so a crafted file is refused instead of running its code. Its fields
    are checked: epoch an int in [1, max_epoch] equal to the folder's epoch-NNNN (when it is one), the
    optimizer state a dict with `state` and `param_groups`."""
    path = Path(folder) / TRAINER_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for a crafted file; RuntimeError for a damaged one
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KebrError(f"{path} is not a safe kebr trainer state and was not loaded ({first[:160]}).") from None
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int) or "optimizer" not in state:
        raise KebrError(f"{path} is not a kebr trainer state (expected the keys epoch and optimizer).")
    epoch, named = state["epoch"], EPOCH_DIR.fullmatch(Path(folder).name)
    if isinstance(epoch, bool) or epoch < 1 or (max_epoch is not None and epoch > max_epoch):
        wanted = f"1 .. {max_epoch} (train.epochs)" if max_epoch is not None else "at least 1"
        raise KebrError(f"{path} holds epoch {str(epoch)[:24]}, outside {wanted}; the run cannot be resumed from it "
                        "(raise --epochs, or start afresh with --force).")
    if named and int(named.group(1)) != epoch:
        raise KebrError(f"{path} holds epoch {epoch} but lies in {Path(folder).name}; the checkpoint is not "
                        "consistent, so the run cannot be resumed from it.")
    step = state.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or (named and int(named.group(2) or 0) != step):
        raise KebrError(f"{path} holds step {str(step)[:24]}, which does not match its folder {Path(folder).name}; "
                        "the run cannot be resumed from it.")
    optimizer = state["optimizer"]
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)):
        raise KebrError(f"{path} holds no optimizer state (a dict with state and param_groups); the run cannot be resumed from it.")
    return state


def resolve_checkpoint(path: str | Path, *, fine_tuned: bool = False) -> Path:
    """A checkpoint folder, or a run directory whose final/ (else its latest checkpoint) is meant.

    fine_tuned: a fine-tuned model is wanted (`kebr predict`): a folder with weights and config, or the
    best-model/ of a `kebr eval` run directory; anything else is refused, saying what to give."""
    path = Path(path)
    if fine_tuned:
        found = resolve_model_dir(path)
        if found is not None:
            return found
        if not path.exists():
            raise KebrError(f"The checkpoint {path} does not exist.")
        raise KebrError(
            f"{path} is not a fine-tuned checkpoint (no {WEIGHTS} and {CONFIG} in it or in {BEST_MODEL}/); "
            "give the best-model/ folder of a `kebr eval` run."
        )
    recover_folder(path / FINAL)
    for candidate in (path, path / FINAL):
        if (candidate / WEIGHTS).exists():
            return candidate
    latest = latest_checkpoint(path) if (path / CHECKPOINTS / LATEST).is_file() else None
    if latest is not None:
        return latest
    raise KebrError(f"{path} is not a kebr checkpoint or run directory (no {WEIGHTS} in it, {FINAL}/ or {CHECKPOINTS}/).")


def resolve_model_dir(path: str | Path) -> Path | None:
    """A fine-tuned model folder: `path` itself or its best-model/ (for `kebr predict`); None if neither."""
    path = Path(path)
    recover_folder(path / BEST_MODEL)
    for candidate in (path, path / BEST_MODEL):
        if (candidate / WEIGHTS).is_file() and (candidate / CONFIG).is_file():
            return candidate
    return None


def read_checkpoint_config(path: Path) -> dict[str, Any]:
    """A checkpoint's config.json, after both its files are checked (`checkpoint_files`: a crafted or
    damaged file is one sentence naming it, before anything is built from it)."""
    cfg_file = Path(path) / CONFIG
    if not (Path(path) / WEIGHTS).exists() or not cfg_file.exists():
        raise KebrError(f"{path} is not a kebr checkpoint (expected {WEIGHTS} and {CONFIG} inside).")
    checkpoint_files.check_weights_file(Path(path) / WEIGHTS)
    return checkpoint_files.read_config(cfg_file)


def load_checkpoint_weights(model: torch.nn.Module, path: Path, skip_prefixes: tuple[str, ...] = ()) -> None:
    """Load a checkpoint's weights into `model`; shape mismatches and non-float weights for float parameters
    are one clear sentence."""
    state = checkpoint_files.load_weights(Path(path) / WEIGHTS)
    state = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    own = model.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise KebrError(
                f"Checkpoint {path} does not fit this data: weight {k} has shape {tuple(v.shape)}, "
                f"the model needs {tuple(own[k].shape)} (different feature dimensions or text model?)."
            )
        # load_state_dict would cast an int8 or bool tensor into a float parameter without a word.
        if k in own and own[k].is_floating_point() and not v.is_floating_point():
            raise KebrError(f"Checkpoint {path} is not usable: weight {k} is stored as {str(v.dtype).replace('torch.', '')}, "
                            f"not as floating point numbers, so it is not a trained weight.")
    unknown = [k for k in state if k not in own]
    if unknown:
        raise KebrError(f"Checkpoint {path} has weights this model does not know, e.g. {unknown[0]}.")
    model.load_state_dict(state, strict=False)


def weights_sha256(path: str | Path) -> str:
    """A hash of a checkpoint's weights (a retrained checkpoint is another input of the runs made from it)."""
    digest = hashlib.sha256()
    with open(Path(path) / WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]

"""Self-contained model folders: `KEBRModel.save_pretrained` / `KEBRModel.from_pretrained` (docs/design.md §6).

A model folder is a pretraining's final/, an evaluation's best-model/, or what `kebr export` writes:

    model.safetensors   KEBR's weights: TCMF (or late fusion), both heads, and the text encoder's when it was
                        trained (config.json "includes_encoder"); a frozen encoder's are not here
    config.json         the run's configuration, "includes_encoder", "text_encoder" (where each part of the
                        text model is), and for a fine-tuned model the features and extractor of its data
    text-encoder/       the tokenizer's files, always; the encoder's Hugging Face config.json when its name is
                        not one every machine resolves offline (`resolvable_offline`: a local folder, a Hub
                        name), with its model.safetensors too when it was frozen (trained weights are in
                        ../model.safetensors, so they are never stored twice)
    README.md           the model card (`kebr_core.model_card`)

So a folder copied alone to another machine loads and predicts the same: nothing is looked up by a path
that existed only where it was trained. `kebr export` stores the encoder whatever its name
(`store_encoder=True`). Every file is written through `checkpoints.save_checkpoint` (crash-safe replace) and read
through `checkpoints.read_checkpoint_config` / `checkpoints.load_checkpoint_weights`, so their checks apply here too.

A folder written before text-encoder/ existed (kebr ≤ this change) loads as it did: the encoder and the
tokenizer by the name in its config.json (`load_text_encoder`), which must then still resolve.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from kebr_core import checkpoints, model_card, runs
from kebr_core.config import SECTIONS, RunConfig
from kebr_core.errors import KebrError
from kebr_core.model import EMBEDDED_ALIASES, RANDOM_PREFIX, KEBRModel, load_text_encoder, load_tokenizer

HF_CONFIG = "config.json"  # the encoder's own Hugging Face config, inside text-encoder/
TOKENIZER_CONFIG = "tokenizer_config.json"  # what marks a saved tokenizer
# Keys of a checkpoint's config.json that `save_pretrained` sets itself (the rest is `extra`).
_OWN_KEYS = frozenset(SECTIONS) | {"includes_encoder", "text_encoder"}
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # a Hugging Face Hub repository id, owner/name


def resolvable_offline(text_model: str) -> bool:
    """Whether every machine with kebr builds this text model without files of its own: a `random-bert:`
    spec (built from the spec, seeded) or the embedded all-MiniLM-L6-v2 (a dependency of kebr)."""
    return text_model.startswith(RANDOM_PREFIX) or text_model in EMBEDDED_ALIASES


def save_pretrained(model: KEBRModel, path: str | Path, cfg: RunConfig | None = None, *,
                    include_encoder: bool | None = None, extra: Mapping[str, Any] | None = None,
                    store_encoder: bool | None = None, tokenizer=None, run_dir: str | Path | None = None) -> Path:
    """Write `model` as a self-contained model folder at `path` (module docstring), replacing one there.

    cfg: the run's configuration (default: the one it was loaded with, else its model and MCC settings).
    include_encoder: the encoder's weights go into model.safetensors (it was trained; default: the loaded
    folder's choice, else whether the encoder is trainable). extra: more keys of config.json (the
    features, stage, seed; default: the loaded folder's). store_encoder: write the encoder to
    text-encoder/ (default: when its name is not `resolvable_offline`; `kebr export`: always).
    tokenizer: the text model's (default: loaded by name). run_dir: the run the model card describes."""
    path = Path(path)
    loaded = getattr(model, "checkpoint_config", None) or {}
    if cfg is None:
        cfg = getattr(model, "run_config", None) or RunConfig(model=model.cfg, mcc=model.mcc_cfg)
    if include_encoder is None:
        include_encoder = bool(loaded["includes_encoder"]) if "includes_encoder" in loaded else any(
            p.requires_grad for p in model.encoder.parameters())
    if extra is None:
        extra = {k: v for k, v in loaded.items() if k not in _OWN_KEYS}
    if store_encoder is None:
        store_encoder = not resolvable_offline(cfg.model.text_model)
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None) or load_tokenizer(cfg.model.text_model)
    where = runs.TEXT_ENCODER if store_encoder else "by name"
    record = {"tokenizer": runs.TEXT_ENCODER, "architecture": where,
              "weights": runs.WEIGHTS if include_encoder else where}

    def write_more(folder: Path) -> None:
        side = folder / runs.TEXT_ENCODER
        tokenizer.save_pretrained(str(side))
        if store_encoder:
            if include_encoder:  # the trained weights are in model.safetensors: the architecture is enough
                model.encoder.config.save_pretrained(str(side))
            else:
                model.encoder.save_pretrained(str(side), safe_serialization=True)
        payload = json.loads((folder / runs.CONFIG).read_text())
        (folder / runs.MODEL_CARD).write_text(model_card.render(payload, model_card.read_results(run_dir)))

    checkpoints.save_checkpoint(path, model, cfg, include_encoder, dict(extra) | {"text_encoder": record}, write_more)
    return path


def encoder_source(folder: str | Path | None, text_model: str) -> str:
    """Where the text encoder of a model folder is described: its text-encoder/ when that holds the
    encoder's configuration, else the text model's name (`load_encoder` reads the same)."""
    side = Path(folder) / runs.TEXT_ENCODER if folder is not None else None
    return str(side) if side is not None and (side / HF_CONFIG).is_file() else text_model


def load_encoder(folder: str | Path, text_model: str) -> nn.Module:
    """The text encoder of a model folder: from text-encoder/ when it is stored there (its weights, or
    only its architecture when the trained weights are in model.safetensors), else by name."""
    side = Path(folder) / runs.TEXT_ENCODER
    if not (side / HF_CONFIG).is_file():
        return load_text_encoder(text_model)
    if (side / runs.WEIGHTS).is_file():
        return load_text_encoder(str(side))
    from transformers import AutoConfig, AutoModel

    try:
        # Its random initialisation is overwritten by model.safetensors; forked so that it does not move the
        # random stream the fusion and heads are initialised from (as loading the encoder by name does not).
        with torch.random.fork_rng(devices=[]):
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(side)))
    except (OSError, ValueError) as e:
        raise KebrError(f"{side} does not hold a usable text-encoder configuration ({str(e).splitlines()[0][:160]}).") from None
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # as load_text_encoder: KEBR reads the last hidden state only
    return encoder


def load_folder_tokenizer(folder: str | Path, text_model: str):
    """The tokenizer of a model folder: its text-encoder/ files, else (an older folder) by name."""
    side = Path(folder) / runs.TEXT_ENCODER
    return load_tokenizer(str(side) if (side / TOKENIZER_CONFIG).is_file() else text_model)


def local_folder(name_or_path: str | Path) -> Path:
    """A model folder on this machine: the path itself, or a Hub repository id ("owner/name") downloaded
    with huggingface_hub (needs the network, or the repository in the local Hub cache)."""
    path = Path(name_or_path)
    if path.exists() or not REPO_ID.fullmatch(str(name_or_path)):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(name_or_path)))
    except Exception as e:  # offline, unknown repository, no access: one sentence either way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KebrError(f"{name_or_path} is neither a folder here nor a Hub repository that could be downloaded ({first[:160]}).") from None


def build_from_folder(folder: str | Path, cfg: RunConfig, includes_encoder: bool,
                      skip_prefixes: tuple[str, ...] = (), route: str = "") -> KEBRModel:
    """The KEBRModel of `cfg` with the encoder (`load_encoder`) and weights of the model folder, and its
    tokenizer attached as `tokenizer`. A folder lacking weights the model needs (the encoder's when
    `includes_encoder`) is refused naming one, and `route` (what to do instead) when given. skip_prefixes:
    weights not loaded (kebr predict leaves the pretraining head out)."""
    from safetensors import safe_open

    folder = Path(folder)
    model = KEBRModel(cfg.model, cfg.mcc, encoder=load_encoder(folder, cfg.model.text_model))
    checkpoints.load_checkpoint_weights(model, folder, skip_prefixes=skip_prefixes)  # its checks of the file come first
    with safe_open(str(folder / runs.WEIGHTS), framework="pt") as f:
        saved = set(f.keys())
    needed = [k for k in model.state_dict() if not k.startswith(skip_prefixes)
              and (includes_encoder or not k.startswith("encoder."))]
    missing = [k for k in needed if k not in saved]
    if missing:
        raise KebrError(f"Checkpoint {folder} lacks weights the model needs, e.g. {missing[0]} (not a fine-tuned "
                        f"checkpoint?){': ' + route if route else ''}.")
    model.tokenizer = load_folder_tokenizer(folder, cfg.model.text_model)
    return model


def load_pretrained(name_or_path: str | Path, skip_prefixes: tuple[str, ...] = ()) -> KEBRModel:
    """A KEBRModel from a model folder (itself, a run's best-model/ or final/) or a Hub repository id, in
    eval mode on the CPU, with `run_config` (RunConfig), `checkpoint_config` (its config.json) and
    `tokenizer` attached (`build_from_folder`)."""
    path = local_folder(name_or_path)
    folder = checkpoints.resolve_model_dir(path) or checkpoints.resolve_checkpoint(path)  # itself or best-model/, else final/
    payload = checkpoints.read_checkpoint_config(folder)
    cfg = RunConfig.from_dict(payload, source=f"checkpoint {folder}")
    model = build_from_folder(folder, cfg, bool(payload.get("includes_encoder", False)), skip_prefixes)
    model.run_config, model.checkpoint_config = cfg, payload
    return model.eval()

"""Run identity: which run a run directory holds (docs/design.md §6).

Identity. A run directory belongs to one resolved configuration and one input store (its path, sample
count, a hash of ids/splits/labels, frame counts and feature description). Writing into a directory
that holds another run stops with one sentence naming the differing keys; `force=True` removes the
files the run wrote (the names above, nothing else) and starts afresh.
The identity is written as the run's config.json (`prepare_run_dir`) and compared key by key
(`check_identity`); settings that change only how a run executes (declared operational in
kebr_core.config: `config.operational_keys()`) may differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from kebr_core.config import RunConfig, operational_keys
from kebr_core.errors import KebrError
from kebr_core.io import atomic_write_text
from kebr_core.runs import CONFIG, METRICS, check_run_files, remove_run_files
from kebr_core.strict import read_settings_data

def data_fingerprint(store_path: str | Path) -> dict[str, Any]:
    """What identifies a store's content cheaply: path, count, a hash of ids/splits/texts/labels, frame
    counts, feature names and extraction settings."""
    from kebr_core.data.store import FeatureStore

    store = FeatureStore(store_path)
    digest = hashlib.sha256()
    for values in (store.ids, store.splits, store.texts):
        digest.update("\n".join(values).encode())
        digest.update(b"\0")
    digest.update(np.ascontiguousarray(store.labels, dtype=np.float32).tobytes())
    a, v = store.lengths()
    return {
        "store": str(Path(store_path).resolve()),
        "samples": len(store),
        "content_sha256": digest.hexdigest()[:16],
        "audio_frames": int(np.sum(a)), "vision_frames": int(np.sum(v)),
        "audio_features": len(store.audio_features), "vision_features": len(store.vision_features),
        "features_sha256": hashlib.sha256(json.dumps([store.audio_features, store.vision_features]).encode()).hexdigest()[:16],
        "extractor": store.attrs.get("extractor") or {},
    }


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"mcc": {"g": 0.2}} → {"mcc.g": 0.2}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def identity_differences(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """The dotted keys whose values differ, as 'key (old → new)', operational keys left out."""
    a, b = flatten(old), flatten(new)
    skip = operational_keys() | set(ignore)  # declared per field in kebr_core.config
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in skip or a.get(key) == b.get(key):
            continue
        diffs.append(f"{key} ({_short(a.get(key, 'unset'))} → {_short(b.get(key, 'unset'))})")
    return diffs


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else "…" + text[-57:]


def run_identity(cfg: RunConfig, stage: str, data: Mapping[str, Any], **inputs: Any) -> dict[str, Any]:
    """What a run directory is tied to: the stage, the configuration, the data and other inputs."""
    return {"stage": stage, **cfg.to_dict(), "data": dict(data), **inputs}


def prepare_run_dir(run_dir: Path, identity: Mapping[str, Any], *, resume: bool, force: bool = False,
                    may_differ: Iterable[str] = (), extra: Mapping[str, Any] | None = None) -> None:
    """Create `run_dir` and write config.json (`identity` + `extra`), or check that the run already there
    is this one.

    - symbolic links among the run's names, or a folder without a kebr config.json holding any of them
      (someone else's files): refused, naming them, also with `force` (`check_run_files`);
    - empty or new folder, or one holding only other files (left alone): start;
    - `force`: remove the run's own files, start afresh;
    - another run there (a differing key outside `config.operational_keys()` and `may_differ`): refused, naming the keys;
    - the same run, `resume`: continue; the same run without `resume` after it trained: refused (--resume).
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG
    if force:
        remove_run_files(run_dir)  # checks the folder first (check_run_files)
    else:
        check_run_files(run_dir)
        if cfg_path.exists():
            check_identity(run_dir, identity, may_differ)
            if not resume and (run_dir / METRICS).exists():
                raise KebrError(
                    f"Run directory {run_dir} already holds this run: pass --resume to continue it, --force to start "
                    "it afresh, or choose another --out."
                )
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(identity) | dict(extra or {})
    atomic_write_text(cfg_path, json.dumps(payload, indent=2, default=str))


def check_identity(run_dir: Path, identity: Mapping[str, Any], may_differ: Iterable[str] = ()) -> None:
    """Refuse (one sentence naming the differing keys) when `run_dir` holds a run other than `identity`."""
    cfg_path = Path(run_dir) / CONFIG
    try:
        old = read_settings_data(cfg_path, "Run configuration", kind="JSON")
    except KebrError:
        old = None
    if not isinstance(old, dict):
        raise KebrError(f"{cfg_path} is not a kebr run configuration; choose another --out.")
    # A field added since the run was written is missing from its config.json; the run computed with the
    # field's default (new fields default to the old behaviour), so it is compared as that default.
    defaults = RunConfig().to_dict()
    old = {k: {**defaults[k], **v} if k in defaults and isinstance(v, dict) else v for k, v in old.items()}
    diffs = identity_differences({k: old.get(k) for k in identity}, identity, ignore=may_differ)
    if diffs:
        raise KebrError(
            f"Run directory {run_dir} holds a run with other settings or data: {'; '.join(diffs)}; pass --force "
            "to start it afresh (removes only that run's files) or choose another --out."
        )

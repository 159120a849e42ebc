"""The search space of `kebr tune`: dotted RunConfig keys mapped to distributions (README "Hyperparameter search").

A space file is TOML (`.toml`; otherwise JSON) with one entry per setting, each key a dotted field of `RunConfig` as
`--set` takes it:

    "mcc.g"        = {low = -0.4, high = 0.4}              # a float range (uniform)
    "train.lr"     = {low = 1e-5, high = 1e-3, log = true} # log-uniform
    "model.layers" = {low = 1, high = 4}                   # an integer field: integers low..high
    "mcc.weight"   = {low = 0.0, high = 1.0, step = 0.25}  # a grid of steps (what --sampler grid needs)
    "mcc.form"     = ["paper", "reference"]                # a choice

Every key and value is checked by the one configuration system (`kebr_core.config`): an unknown key,
a bound or choice outside the field's valid range (g must lie in (−0.5, 0.5)), or a value of the wrong
type is one sentence naming the file and the key. `PAPER_SPACE` is the built-in `--space paper`: the
knobs the paper tunes or fixes by hand (g, λ, the learning rate, dropout, K).

Optuna is imported only where a trial draws its values (`Param.suggest`).
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from kebr_core.config import RunConfig, field_type, read_settings_file
from kebr_core.errors import KebrError

RANGE_KEYS = frozenset({"low", "high", "log", "step"})


@dataclass(frozen=True)
class Param:
    """One searched setting: a range [low, high] (log scale, or steps of `step`) or a list of choices."""

    key: str  # dotted RunConfig key, e.g. "mcc.g"
    kind: str  # "float", "int" or "choice"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """This setting's value for an Optuna trial (the parameter's name is the dotted key)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid(self) -> list[Any]:
        """The values `--sampler grid` tries: the choices, or low, low + step, …, high."""
        if self.kind == "choice":
            return list(self.choices)
        if self.step is None and self.kind == "float":
            raise KebrError(f"--sampler grid needs a list of values or a step for {self.key} (e.g. "
                            f'{{low = {self.low}, high = {self.high}, step = …}}).')
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def describe(self) -> dict[str, Any]:
        """The entry as a space file writes it (for config.json's identity and trials.csv)."""
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log} | ({"step": self.step} if self.step else {})


SearchSpace = tuple[Param, ...]

PAPER_SPACE_ENTRIES: dict[str, Any] = {
    "mcc.g": {"low": -0.4, "high": 0.4},  # Fig. 4 sweeps g
    "mcc.weight": {"low": 0.0, "high": 1.0},  # λ of Eq. 17 (the authors' code: 1.0 and 0.5)
    "train.lr": {"low": 1e-5, "high": 1e-3, "log": True},  # the head's rate
    "model.dropout": {"low": 0.0, "high": 0.5},
    "model.layers": {"low": 1, "high": 6},  # K of Eq. 2
}
BUILTIN_SPACES = {"paper": PAPER_SPACE_ENTRIES}


def load_space(name_or_path: str | Path, leave_out: tuple[str, ...] = ()) -> SearchSpace:
    """A built-in space by name (`BUILTIN_SPACES`, without the keys in `leave_out`) or a TOML/JSON space
    file (all of it), checked (module docstring)."""
    if str(name_or_path) in BUILTIN_SPACES:
        entries = {k: v for k, v in BUILTIN_SPACES[str(name_or_path)].items() if k not in leave_out}
        return parse_space(entries, f"--space {name_or_path}")
    path = Path(name_or_path)
    if not path.is_file():
        raise KebrError(f"--space {path} is neither a file nor a built-in space ({', '.join(BUILTIN_SPACES)}); give "
                        "a TOML or JSON space file.")
    data = read_settings_file(path, "--space", "dotted settings mapped to ranges or lists")
    return parse_space(data, f"--space {path}")


def _flatten(entries: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """TOML's unquoted dotted keys (mcc.g = {…}) nest tables: a table that is not a range is a section."""
    out: dict[str, Any] = {}
    for key, value in entries.items():
        if isinstance(value, Mapping) and not (set(value) & RANGE_KEYS):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def parse_space(entries: Mapping[str, Any], source: str) -> SearchSpace:
    """Parse and check a space's entries ({dotted key: range table or list}); `source` names it in errors."""
    flat = _flatten(entries)
    if not flat:
        raise KebrError(f"{source} names no setting to search; add e.g. \"mcc.g\" = {{low = -0.4, high = 0.4}}.")
    return tuple(_parse_param(key, value, source) for key, value in flat.items())


def _base_type(tp: Any) -> Any:
    """float for `float | None`, the field's type otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _check_value(key: str, value: Any, label: str) -> None:
    """One value of a setting, checked by the configuration's own rules (type and valid range)."""
    RunConfig().set_values({key: value}, labels={key: label})


def _parse_param(key: str, value: Any, source: str) -> Param:
    tp = _base_type(field_type(key, source))
    label = f"{source}: {key}"
    if isinstance(value, list):
        if not value:
            raise KebrError(f"{label} lists no value to choose from.")
        if len({json.dumps(v) for v in value}) != len(value):
            raise KebrError(f"{label} lists a value twice.")
        if any(isinstance(v, (list, dict)) for v in value):
            raise KebrError(f"{label}: each choice must be one value (a number, a string, true or false).")
        for v in value:
            _check_value(key, float(v) if tp is float and isinstance(v, int) and not isinstance(v, bool) else v, label)
        return Param(key, "choice", choices=tuple(value))
    if not isinstance(value, Mapping):
        raise KebrError(f"{label} must be a range {{low = …, high = …}} or a list of values, not {value!r}.")
    unknown = sorted(set(value) - RANGE_KEYS)
    if unknown:
        raise KebrError(f"{label} has unknown entr{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} "
                        "(a range takes low, high, log, step).")
    if "low" not in value or "high" not in value:
        raise KebrError(f"{label} needs both low and high.")
    if tp not in (int, float):
        raise KebrError(f"{label}: {key} is not a number, so it takes a list of values, not a range.")
    low, high, log, step = value["low"], value["high"], value.get("log", False), value.get("step")
    for name, bound in (("low", low), ("high", high)):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise KebrError(f"{label}: {name} must be a number, not {bound!r}.")
        if tp is int and not float(bound).is_integer():
            raise KebrError(f"{label}: {key} is an integer setting, so {name} must be an integer, not {bound}.")
        _check_value(key, int(bound) if tp is int else float(bound), f"{label} ({name})")
    if not low < high:
        raise KebrError(f"{label}: low ({low}) must be below high ({high}).")
    if not isinstance(log, bool):
        raise KebrError(f"{label}: log must be true or false, not {log!r}.")
    if log and low <= 0:
        raise KebrError(f"{label}: a log range needs low > 0, not {low}.")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not (math.isfinite(step) and step > 0):
            raise KebrError(f"{label}: step must be a positive number, not {step!r}.")
        if tp is int and not float(step).is_integer():
            raise KebrError(f"{label}: {key} is an integer setting, so step must be an integer, not {step}.")
        if log:
            raise KebrError(f"{label}: give log or step, not both.")
    if tp is int:
        return Param(key, "int", int(low), int(high), log, int(step) if step is not None else None)
    return Param(key, "float", float(low), float(high), log, float(step) if step is not None else None)


def space_identity(space: SearchSpace) -> dict[str, Any]:
    """The space as config.json records it ({key: its entry}): a rerun with another space is refused."""
    return {p.key: p.describe() for p in space}

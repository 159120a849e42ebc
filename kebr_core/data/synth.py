"""The synthetic benchmark (docs/design.md §9): multimodal samples whose label is carried
by text, audio and vision in known, controllable shares, each stream as easy or hard to read as asked. It tests the pipeline and shows what TCMF and MCC do under
known ground truth; it is never reported as a MOSI/MOSEI result.

Generative model (all draws from one seeded numpy Generator, so a seed fixes every byte of data):

Per sample i, three latent sentiment scores on the label scale:
    t_i  text:   the VADER score × 3/4 of the one sentiment word in the sentence (`kebr_core.lexicon`),
                 i.e. exactly the label sentiment-knowledge masking predicts for it;
                 0 for the `neutral_fraction` of sentences that contain no lexicon word at all
    a_i  audio:  Uniform(-3, 3)
    v_i  vision: Uniform(-3, 3)                     (t independent of a and v)
a and v are independent by default (each carries its own part of the label: complementary). With a
latent correlation ρ > 0 (`--latent-correlation`) they share a part: a = 6Φ(z_a) − 3, v = 6Φ(z_v) − 3
with z_a = √ρ·z_0 + √(1−ρ)·e_a, z_v = √ρ·z_0 + √(1−ρ)·e_v (z_0, e_a, e_v ~ N(0, 1), Φ the normal CDF),
so a and v stay Uniform(−3, 3) and ρ = 1 makes them the same latent (redundant: either stream alone
carries all of their label share).

Label (labeled splits; NaN for the unlabeled pretraining split):
    y_i = clip( (s_t·t_i + s_a·a_i + s_v·v_i) / (s_t + s_a + s_v)  +  σ_y·ε_i ,  -3, 3 ),   ε_i ~ N(0, 1)
s_t, s_a, s_v are the strengths (`--text-strength`, `--audio-strength`, `--vision-strength`): each
stream's share of the label. Unequal s_a and s_v make the imbalance (by default audio carries four
times the weight of vision).

Text: a real English sentence from a template and a subject ("i thought the {subject} was {word}",
"the {subject} left me {word}", ...). The word is drawn uniformly from a list of real VADER
adjectives (`SENTIMENT_WORDS`, `FEELING_WORDS`); template and subject words are checked to be absent
from the lexicon, so the sentence has one sentiment word and t_i is its score. Neutral sentences
("the {subject} runs for about two hours") have none.

Frames: modality m ∈ {audio, vision} with latent u = m_i / 3 ∈ [-1, 1], dimension d, k = max(1, d // 8):
    length  L ~ Uniform{len_min, …, len_max}       (audio 30–300, vision 10–55 by default);
            with probability `missing_vision` a sample has no vision frames (L = 0, "no face")
    x[τ, j] = σ_m·ε[τ, j]                          noise, ε ~ N(0, 1), every column j, every frame τ
            + β_m·u                for j < k            "steady" columns: the latent in every frame
            + 3β_m·u·g[τ]          for k ≤ j < 2k      "burst" columns: only in event frames,
                                                       g[τ] ~ Bernoulli(p_burst) (per-frame structure:
                                                       attention can find them, a mean dilutes them)
    columns ≥ 2k carry noise only. Defaults β = 0.5, σ = 1, p_burst = 0.25, for both streams;
    β_a, σ_a, β_v, σ_v (`--audio-signal`, `--audio-noise`, `--vision-signal`, `--vision-noise`) set
    one stream's own signal and noise, e.g. an easy audio stream (β_a/σ_a high) beside a hard vision
    stream (β_v/σ_v low) that carries the same share of the label.
So the mean of the steady columns over a sample's frames estimates β_m·u with noise σ_m/√(L·k): how
easily a stream's share can be read grows with its signal-to-noise ratio β_m/σ_m and its length L,
while how much of the label it carries is set by its strength alone.

Splits: the `n` labeled samples are split train/valid/test in CMU-MOSI's proportions (1284/229/686
of 2199); `unlabeled` more samples form the "unlabeled" split. The latents (t, a, v) of every sample
are saved in the store as `synth/latent` (N, 3) float32, and the settings as the `synth` attribute.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
from scipy import special

from kebr_core.data.store import Sample, StoreWriter
from kebr_core.errors import KebrError
from kebr_core.io import atomic_output
from kebr_core.lexicon import load_lexicon

# Adjectives that describe the thing watched, and feelings of the speaker: real VADER entries.
SENTIMENT_WORDS = (
    "amazing awesome beautiful brilliant excellent fantastic good great lovely nice outstanding perfect "
    "wonderful superb enjoyable fun funny pleasant charming delightful impressive interesting inspiring "
    "fine okay cool clever smart sweet awful bad boring disappointing dull horrible poor stupid terrible "
    "ugly weak annoying depressing painful pathetic ridiculous silly lame confusing messy scary tragic "
    "disgusting dreadful miserable lousy nasty offensive unpleasant upsetting"
).split()
FEELING_WORDS = "excited thrilled shocked bored angry worried hopeful proud happy glad sad".split()
SENTIMENT_TEMPLATES = (
    "i thought the {subject} was {word}", "to me the {subject} felt {word}", "overall the {subject} is {word}",
    "the {subject} in this one was {word}", "i found the {subject} {word}", "the {subject} was {word} from start to end",
    "the {subject} of this movie was {word}", "i have to say the {subject} was {word}",
    "by the end the {subject} seemed {word}", "in the end the {subject} was {word}",
)
FEELING_TEMPLATES = (
    "watching the {subject} made me {word}", "i felt {word} after the {subject}", "the {subject} left me {word}",
)
NEUTRAL_TEMPLATES = (
    "the {subject} was about two brothers in a small town", "i watched the {subject} last night with my sister",
    "the {subject} runs for about two hours", "the {subject} was shot in the winter",
    "i saw the {subject} on a tuesday", "the {subject} takes place in the city",
    "we talked about the {subject} on the way home", "the {subject} has three parts",
)
SUBJECTS = (
    "movie", "film", "ending", "story", "acting", "plot", "soundtrack", "dialogue", "script", "first half",
    "second half", "music", "camera work", "lead actor", "main character", "final scene", "cast", "sequel",
)
MOSI_SPLIT = (1284, 229, 686)  # train / valid / test of CMU-MOSI


@dataclass
class SynthConfig:
    """Settings of the generator (see the module docstring for the formulas)."""

    n: int = 2199  # labeled samples (train + valid + test)
    unlabeled: int = 0  # extra samples in the "unlabeled" split (label NaN)
    audio_dim: int = 33
    vision_dim: int = 35
    text_strength: float = 1.0  # s_t
    audio_strength: float = 1.0  # s_a
    vision_strength: float = 0.25  # s_v
    label_noise: float = 0.2  # σ_y
    signal: float = 0.5  # β, both streams unless set per stream
    noise: float = 1.0  # σ, both streams unless set per stream
    audio_signal: float | None = None  # β_a (None: signal)
    audio_noise: float | None = None  # σ_a (None: noise)
    vision_signal: float | None = None  # β_v (None: signal)
    vision_noise: float | None = None  # σ_v (None: noise)
    latent_correlation: float = 0.0  # ρ between a and v (0: independent, 1: the same latent)
    burst_prob: float = 0.25  # p_burst
    neutral_fraction: float = 0.1
    audio_len: tuple[int, int] = (30, 300)
    vision_len: tuple[int, int] = (10, 55)
    missing_vision: float = 0.0
    seed: int = 0

    def stream(self, modality: str) -> tuple[float, float]:
        """(β_m, σ_m) of "audio" or "vision": its own setting, else the shared signal and noise."""
        signal, noise = getattr(self, f"{modality}_signal"), getattr(self, f"{modality}_noise")
        return (self.signal if signal is None else signal), (self.noise if noise is None else noise)

    def check(self) -> None:
        strengths = (self.text_strength, self.audio_strength, self.vision_strength)
        if min(strengths) < 0 or sum(strengths) <= 0:
            raise KebrError(f"Synth strengths must be ≥ 0 and not all 0, got text/audio/vision {strengths}.")
        if self.n < 0 or self.unlabeled < 0 or self.n + self.unlabeled == 0:
            raise KebrError(f"Synth needs at least one sample (n={self.n}, unlabeled={self.unlabeled}).")
        if self.audio_dim < 1 or self.vision_dim < 1:
            raise KebrError(f"Synth feature dimensions must be ≥ 1, got audio {self.audio_dim}, vision {self.vision_dim}.")
        for name, (lo, hi) in (("audio", self.audio_len), ("vision", self.vision_len)):
            if not 1 <= lo <= hi:
                raise KebrError(f"Synth {name} lengths must satisfy 1 ≤ min ≤ max, got {lo}–{hi}.")
        for name in ("signal", "noise", "audio_signal", "audio_noise", "vision_signal", "vision_noise"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise KebrError(f"Synth {name} must be a finite number ≥ 0, got {value}.")
        for name in ("neutral_fraction", "missing_vision", "burst_prob", "latent_correlation"):
            if not 0 <= getattr(self, name) <= 1:
                raise KebrError(f"Synth {name} must lie in [0, 1], got {getattr(self, name)}.")


def split_sizes(n: int) -> tuple[int, int, int]:
    """train/valid/test sizes of n labeled samples in CMU-MOSI's proportions (sum = n)."""
    train = round(n * MOSI_SPLIT[0] / sum(MOSI_SPLIT))
    valid = round(n * MOSI_SPLIT[1] / sum(MOSI_SPLIT))
    return train, valid, n - train - valid


def _sentences(rng: np.random.Generator, count: int, neutral_fraction: float) -> tuple[list[str], np.ndarray]:
    """count sentences and their text latents t (the sentiment word's lexicon score ×3/4, or 0)."""
    lexicon = load_lexicon()
    words = SENTIMENT_WORDS + FEELING_WORDS
    missing = [w for w in words if w not in lexicon]
    if missing:  # a guard against a changed VADER file; the word lists are VADER entries
        raise KebrError(f"The sentiment lexicon lacks the synth word(s) {', '.join(missing)}.")
    scores = np.array([lexicon[w] for w in words], dtype=np.float32)
    neutral = rng.random(count) < neutral_fraction
    word_idx = rng.integers(0, len(words), count)
    subject_idx = rng.integers(0, len(SUBJECTS), count)
    template_draw = rng.random(count)
    texts = []
    for i in range(count):
        subject = SUBJECTS[subject_idx[i]]
        if neutral[i]:
            template = NEUTRAL_TEMPLATES[int(template_draw[i] * len(NEUTRAL_TEMPLATES))]
        elif word_idx[i] < len(SENTIMENT_WORDS):
            template = SENTIMENT_TEMPLATES[int(template_draw[i] * len(SENTIMENT_TEMPLATES))]
        else:
            template = FEELING_TEMPLATES[int(template_draw[i] * len(FEELING_TEMPLATES))]
        sentence = template.format(subject=subject, word=words[word_idx[i]])
        texts.append(sentence[0].upper() + sentence[1:] + ".")
    t = np.where(neutral, 0.0, scores[word_idx]).astype(np.float32)
    return texts, t


def _audio_vision_latents(rng: np.random.Generator, count: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """a, v ~ Uniform(-3, 3), (count,) each; independent when rho = 0, else through a Gaussian copula
    whose normals have correlation rho (module docstring)."""
    if rho == 0:
        return rng.uniform(-3, 3, count).astype(np.float32), rng.uniform(-3, 3, count).astype(np.float32)
    shared, own_a, own_v = rng.standard_normal((3, count))
    z_a = math.sqrt(rho) * shared + math.sqrt(1 - rho) * own_a
    z_v = math.sqrt(rho) * shared + math.sqrt(1 - rho) * own_v
    return (6 * special.ndtr(z_a) - 3).astype(np.float32), (6 * special.ndtr(z_v) - 3).astype(np.float32)


def _frames(rng: np.random.Generator, latent: np.ndarray, lengths: np.ndarray, dim: int, signal: float, noise: float,
            burst_prob: float) -> list[np.ndarray]:
    """Per-sample (L_i, dim) float32 frames carrying latent/3 with signal β and noise σ (module docstring),
    built for all samples at once."""
    total = int(lengths.sum())
    frames = rng.standard_normal((total, dim), dtype=np.float32) * np.float32(noise)
    u = np.repeat(latent / 3.0, lengths).astype(np.float32)  # (total,) each frame's sample latent
    k = max(1, dim // 8)
    frames[:, :k] += (signal * u)[:, None]
    burst = (rng.random(total) < burst_prob).astype(np.float32)
    frames[:, k: 2 * k] += (3 * signal * u * burst)[:, None]
    return np.split(frames, np.cumsum(lengths)[:-1])


def synth_samples(cfg: SynthConfig) -> tuple[list[Sample], np.ndarray]:
    """Generate the samples and their latents (N, 3) [t, a, v]; labeled ones first, then unlabeled."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    count = cfg.n + cfg.unlabeled
    texts, t = _sentences(rng, count, cfg.neutral_fraction)
    a, v = _audio_vision_latents(rng, count, cfg.latent_correlation)
    s_t, s_a, s_v = cfg.text_strength, cfg.audio_strength, cfg.vision_strength
    y = (s_t * t + s_a * a + s_v * v) / (s_t + s_a + s_v) + cfg.label_noise * rng.standard_normal(count)
    y = np.clip(y, -3, 3).astype(np.float32)
    audio_lengths = rng.integers(cfg.audio_len[0], cfg.audio_len[1] + 1, count)
    vision_lengths = rng.integers(cfg.vision_len[0], cfg.vision_len[1] + 1, count)
    vision_lengths[rng.random(count) < cfg.missing_vision] = 0
    audio = _frames(rng, a, audio_lengths, cfg.audio_dim, *cfg.stream("audio"), cfg.burst_prob)
    vision = _frames(rng, v, vision_lengths, cfg.vision_dim, *cfg.stream("vision"), cfg.burst_prob)

    train, valid, _ = split_sizes(cfg.n)
    splits = np.array(["train"] * train + ["valid"] * valid + ["test"] * (cfg.n - train - valid)
                      + ["unlabeled"] * cfg.unlabeled)
    splits[: cfg.n] = rng.permutation(splits[: cfg.n])  # labeled samples land in splits at random
    samples = [
        Sample(id=f"synth{i:06d}", text=texts[i], audio=audio[i], vision=vision[i],
               label=float(y[i]) if i < cfg.n else math.nan, split=str(splits[i]), text_source="import")
        for i in range(count)
    ]
    return samples, np.stack([t, a, v], axis=1)


def generate_synth(
    out: str | Path, cfg: SynthConfig, *, progress: Callable[[int, int], None] | None = None, overwrite: bool = False,
    dataset: str = "",
) -> dict[str, Any]:
    """Write a synthetic store to `out` (atomically); `dataset`: the catalog entry it is made for, recorded in
    the store. Returns {"path", "samples", "splits", "config"}."""
    samples, latent = synth_samples(cfg)
    counts: dict[str, int] = {}
    with atomic_output(out, overwrite) as tmp:
        with StoreWriter(tmp, [f"synth_audio_{k}" for k in range(cfg.audio_dim)],
                         [f"synth_vision_{k}" for k in range(cfg.vision_dim)],
                         extractor={"generator": "kebr synth"}, source=f"kebr synth seed {cfg.seed}", dataset=dataset,
                         flush_every=4096, flush_seconds=math.inf) as writer:
            for done, sample in enumerate(samples, start=1):
                writer.add(sample)
                counts[sample.split] = counts.get(sample.split, 0) + 1
                if progress is not None and (done % 512 == 0 or done == len(samples)):
                    progress(done, len(samples))
        with h5py.File(tmp, "r+") as f:
            f.create_dataset("synth/latent", data=latent.astype(np.float32))
            f.attrs["synth"] = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    return {"path": str(out), "samples": len(samples), "splits": counts, "config": dataclasses.asdict(cfg)}


def read_latents(path: str | Path) -> np.ndarray:
    """The (N, 3) latents [t, a, v] of a synthetic store, in store order."""
    with h5py.File(path, "r") as f:
        if "synth/latent" not in f:
            raise KebrError(f"Store {path} was not made by kebr synth (no synth/latent dataset).")
        n = int(f["committed"][0])
        return f["synth/latent"][:n]

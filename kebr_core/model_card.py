"""The README.md model card of a model folder (`model.save_pretrained`, `kebr export`).

Made from what the folder records (its config.json: configuration, "trained_on" = the training data's
fingerprint and splits, "features" = the extractors a fine-tuned model expects) and, when the run is at
hand, its results.json (test metrics, mean ± std over the fine-tuning seeds). Hugging Face Hub metadata
(language, library, tags) in a YAML header; then what the model is (KEBR and the paper), the data, the
configuration, the test metrics, intended use and limits, and how to load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from kebr_core import checkpoints, runs
from kebr_core.io import atomic_write_text
from kebr_core.own_files import add_to_record

CITATION = """@inproceedings{kebr2024,
  title     = {{KEBR}: Knowledge Enhanced Self-Supervised Balanced Representation for Multimodal Sentiment Analysis},
  booktitle = {Proceedings of the ACM International Conference on Multimedia (ACM MM 2024)},
  address   = {Melbourne, Australia},
  year      = {2024}
}"""
# results.json's metric keys, in the paper's Table 1 order, with how they are shown.
METRICS = (("acc2_has0", "Acc-2 (has0)", True), ("f1_has0", "F1 (has0)", True), ("acc2_non0", "Acc-2 (non0)", True),
           ("f1_non0", "F1 (non0)", True), ("acc7", "Acc-7", True), ("acc5", "Acc-5", True), ("mae", "MAE", False),
           ("corr", "Corr", False))
# Configuration settings shown in the card (config.json holds all of them).
SHOWN_SETTINGS = ("model.text_model", "model.fusion", "model.layers", "model.heads", "model.d_audio", "model.d_vision",
                  "mcc.form", "mcc.g", "mcc.weight", "train.epochs", "train.lr", "train.unfreeze", "train.seeds")


def read_results(run_dir: str | Path | None) -> dict[str, Any] | None:
    """The run's results.json (None when there is no run or no results yet)."""
    if run_dir is None or not (Path(run_dir) / runs.RESULTS_JSON).is_file():
        return None
    try:
        data = json.loads((Path(run_dir) / runs.RESULTS_JSON).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_card(model_dir: str | Path, run_dir: str | Path | None) -> None:
    """Rewrite model_dir/README.md from its config.json and run_dir's results (crash-safe replace)."""
    payload = checkpoints.read_checkpoint_config(Path(model_dir))
    atomic_write_text(Path(model_dir) / runs.MODEL_CARD, render(payload, read_results(run_dir)))
    add_to_record(Path(model_dir), runs.MODEL_CARD)  # rewritten by kebr: still kebr's (`own_files`)


def _setting(payload: Mapping[str, Any], dotted: str) -> Any:
    section, key = dotted.split(".")
    return (payload.get(section) or {}).get(key)


def _metric_rows(results: Mapping[str, Any]) -> list[str]:
    mean, std = results.get("mean") or {}, results.get("std") or {}
    rows = ["| metric | mean | std |", "| --- | --- | --- |"]
    for key, label, percent in METRICS:
        if key in mean:
            scale, fmt = (100.0, "{:.2f}") if percent else (1.0, "{:.4f}")
            rows.append(f"| {label} | {fmt.format(mean[key] * scale)} | {fmt.format(std.get(key, float('nan')) * scale)} |")
    return rows


def _data_lines(trained_on: Mapping[str, Any]) -> list[str]:
    data = trained_on.get("data") or {}
    if not data:
        return ["Not recorded in this folder (written by a kebr before model cards)."]
    lines = [f"- store: `{Path(str(data.get('store', '?'))).name}`, {data.get('samples', '?')} samples, content "
             f"SHA-256 `{data.get('content_sha256', '?')}`, features SHA-256 `{data.get('features_sha256', '?')}`"]
    splits = trained_on.get("splits")
    if isinstance(splits, Mapping):
        lines.append("- splits (labeled samples): " + ", ".join(f"{k} {v}" for k, v in splits.items()))
    elif splits:
        lines.append(f"- pretrained on the splits {', '.join(splits)}" + (f" ({trained_on['samples']} samples)" if "samples" in trained_on else ""))
    elif "samples" in trained_on:
        lines.append(f"- pretrained on every split ({trained_on['samples']} samples with a word to mask)")
    return lines


def _inputs_lines(features: Mapping[str, Any] | None) -> list[str]:
    if not features:
        return ["- This is a pretraining checkpoint: it predicts the lexicon score of a masked word, not an utterance's "
                "sentiment. Fine-tune it (`kebr eval --pretrained THIS_FOLDER`) before scoring anything."]
    made_by = features.get("extractor") or {}
    audio, vision = features.get("audio_features") or [], features.get("vision_features") or []
    if _scores_videos(features):
        return [f"- Audio: {len(audio)} features per frame from the `{made_by.get('audio')}` set of `kebr extract`"
                f" ({features.get('audio_rate_hz') or '?'} Hz); vision: {len(vision)} features per frame from the "
                f"`{made_by.get('vision')}` backend at {made_by.get('fps')} fps. A video must be described by the same "
                "extractors at prediction time: `kebr predict` extracts them with exactly these settings; features "
                "from another extractor (OpenFace, COVAREP, another feature set) do not fit this model."]
    origin = (made_by.get("generator") or made_by.get("importer")) if isinstance(made_by, Mapping) else None
    return [f"- Trained on features made by {origin or 'something other than kebr extract'} ({len(audio)} audio, "
            f"{len(vision)} vision per frame): it scores only data with those very features, never a raw video."]


def _scores_videos(features: Mapping[str, Any] | None) -> bool:
    made_by = (features or {}).get("extractor") or {}
    return isinstance(made_by, Mapping) and made_by.get("tool") == "kebr extract"


def render(payload: Mapping[str, Any], results: Mapping[str, Any] | None = None) -> str:
    """The model card (Markdown with a Hub YAML header) of a model folder's config.json `payload`."""
    features = payload.get("features")
    finetuned = payload.get("stage") == "finetune" or bool(features)
    text_model = _setting(payload, "model.text_model")
    kind = "fine-tuned sentiment model" if finetuned else "pretraining checkpoint"
    encoder = payload.get("text_encoder") or {}
    lines = [
        "---", "language: en", "library_name: kebr", "license: other",
        "tags:", "- multimodal-sentiment-analysis", "- kebr", "- pytorch", "---", "",
        f"# KEBR {kind}", "",
        "A KEBR model (Knowledge Enhanced self-supervised Balanced Representation for multimodal sentiment "
        "analysis, ACM MM 2024): a text encoder, text-based cross-modal fusion (TCMF) of audio and vision into "
        "the text, and the multimodal cosine constraint (MCC). Made with kebr"
        + (f"; the sentiment of an utterance on MOSI's scale [-3, 3] (fine-tuning seed {payload['seed']}, "
           "the seed with the lowest validation MAE)." if finetuned and "seed" in payload else "."),
        "", "## Training data", "", *_data_lines(payload.get("trained_on") or {}), "",
        "## Configuration", "",
        "| setting | value |", "| --- | --- |",
        *[f"| {key} | {json.dumps(_setting(payload, key))} |" for key in SHOWN_SETTINGS if _setting(payload, key) is not None],
        "", "Every setting is in `config.json`. Text encoder: "
        + ("fine-tuned, its weights in `model.safetensors`" if payload.get("includes_encoder") else "frozen")
        + ("; architecture and tokenizer in `text-encoder/`" if encoder.get("architecture") == runs.TEXT_ENCODER
           else f"; rebuilt by name (`{text_model}`), tokenizer in `text-encoder/`") + ".", "",
    ]
    if finetuned:
        lines += ["## Test results", ""]
        if results and results.get("mean"):
            seeds = results.get("seeds") or []
            ddof = results.get("std_ddof", 1)
            lines += [f"Over {len(seeds)} fine-tuning seed(s) {', '.join(map(str, seeds))}: mean and std "
                      f"({'sample std, ddof 1' if ddof == 1 else 'population std, ddof 0'}); accuracies and F1 in percent; "
                      "each seed's epoch chosen on validation, test evaluated once.", "", *_metric_rows(results), ""]
        else:
            lines += ["Not recorded: the run had not finished its seeds when this folder was written.", ""]
    lines += [
        "## Intended use and limits", "",
        "- Research on multimodal sentiment analysis of English opinion videos (CMU-MOSI/MOSEI-like monologues). "
        "Not for decisions about people.",
        f"- English only: the text encoder (`{text_model}`) and the VADER sentiment lexicon used to mask "
        "sentiment words in pretraining are English.",
        *_inputs_lines(features),
        "- Scores reflect the training data's annotators and domain; expect lower accuracy on other domains, "
        "speakers, languages or recording conditions.", "",
        "## How to use", "",
        *(["```bash", "kebr predict clip.mp4 --model THIS_FOLDER", "```", ""] if _scores_videos(features) else []),
        "```python",
        "from kebr_core.model import KEBRModel", 'model = KEBRModel.from_pretrained("THIS_FOLDER")', "```", "",
        "## Citation", "", "```bibtex", CITATION, "```", "",
    ]
    return "\n".join(lines)

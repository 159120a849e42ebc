"""bench/gpu.sh's first piece: can the GPU pieces start here? Imports every recipe and the CLI, pytest, loads
the random-BERT tokenizer (kept in the repository) and the sentiment lexicon (vaderSentiment). Prints one
line either way; exit 1 when anything is missing."""

import importlib
import pkgutil
import sys

try:
    import kebr_cli.main  # noqa: F401
    import kebr_core.recipes

    for module in pkgutil.iter_modules(kebr_core.recipes.__path__):
        importlib.import_module(f"kebr_core.recipes.{module.name}")
    import pytest  # noqa: F401

    from kebr_core.lexicon import load_lexicon
    from kebr_core.text_encoder import load_tokenizer

    words, pieces = len(load_lexicon()), load_tokenizer("random-bert:").vocab_size
except Exception as e:  # one line, whatever it is: the script stops after it
    print(f"bench/gpu.sh: the GPU pieces cannot start here: {type(e).__name__}: {e}")
    sys.exit(1)
print(f"every recipe imports; random-BERT tokenizer: {pieces} pieces; lexicon: {words} words")

"""Packages only some commands need, imported when first used (docs/architecture.md).

`kebr_core` imports everywhere, also on a machine without the media packages (the GPU machine of
bench/gpu.sh has no `av`): a module that needs one names it as `OptionalModule`, and only reading or
writing media imports it; without the package that use stops with one sentence naming it."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from kebr_core.errors import KebrError


class OptionalModule:
    """Stands for the module `name` (from the PyPI package `package`), imported on first attribute use."""

    def __init__(self, name: str, package: str, purpose: str):
        self._name, self._package, self._purpose = name, package, purpose
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            try:
                self._module = importlib.import_module(self._name)
            except ImportError:
                raise KebrError(f"{self._purpose} needs the package {self._package}, which is not installed here: "
                                f"pip install {self._package}.") from None
        return getattr(self._module, attribute)

"""kebr_core: the science of KEBR (features, masking, TCMF, MCC, training, metrics, stores).

Nothing in this package imports Typer or Rich; the CLI (`kebr_cli`) is a thin layer over it.
"""

__version__ = "0.1.0"

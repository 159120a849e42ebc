"""kebr_cli: the thin Typer command-line face of kebr_core."""

"""Entry point of the `kebr` console script: imports every command module so it registers on `app`,
then lists the commands in workflow order under four help panels."""

from kebr_cli.app import app, stop_on_sigterm

# One import per command module; each registers its command(s) on `app`.
# (keep this list sorted; the order users see is WORKFLOW below)
import kebr_cli.ablate  # noqa: F401
import kebr_cli.analyze  # noqa: F401
import kebr_cli.compare  # noqa: F401
import kebr_cli.data  # noqa: F401
import kebr_cli.demo  # noqa: F401
import kebr_cli.export  # noqa: F401
import kebr_cli.extract  # noqa: F401
import kebr_cli.predict  # noqa: F401
import kebr_cli.table  # noqa: F401
import kebr_cli.train  # noqa: F401
import kebr_cli.tune  # noqa: F401

# `kebr --help` lists the commands in the order a study uses them, under these panels (the README's
# command table follows the same order; tests/test_cli_basics.py checks both).
WORKFLOW = {
    "Data": ("extract", "import", "synth", "merge", "inspect"),
    "Training": ("pretrain", "eval", "tune"),
    "Analysis": ("ablate", "compare", "analyze", "table"),
    "Use": ("predict", "export", "demo"),
}
_ORDER = [name for names in WORKFLOW.values() for name in names]
_PANEL = {name: panel for panel, names in WORKFLOW.items() for name in names}


def _name(command) -> str:
    return command.name or command.callback.__name__


app.registered_commands.sort(key=lambda c: _ORDER.index(_name(c)))
for _command in app.registered_commands:
    _command.rich_help_panel = _PANEL[_name(_command)]


def run() -> None:
    stop_on_sigterm()  # the console script and `python -m kebr_cli` only: not a library or test process
    app()


if __name__ == "__main__":
    run()

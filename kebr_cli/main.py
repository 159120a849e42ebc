"""Entry point of the `kebr` console script: imports every command module so it registers on `app`."""

from kebr_cli.app import app

# One import per command module; each registers its command(s) on `app`.
# (keep this list sorted)
import kebr_cli.ablate  # noqa: F401
import kebr_cli.analyze  # noqa: F401
import kebr_cli.data  # noqa: F401
import kebr_cli.demo  # noqa: F401
import kebr_cli.extract  # noqa: F401
import kebr_cli.predict  # noqa: F401
import kebr_cli.train  # noqa: F401


def run() -> None:
    app()


if __name__ == "__main__":
    run()

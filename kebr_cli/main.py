"""Entry point of the `kebr` console script: imports every command module so it registers on `app`."""

from kebr_cli.app import app

# One import per command module; each registers its command(s) on `app`.
# (keep this list sorted)


def run() -> None:
    app()


if __name__ == "__main__":
    run()

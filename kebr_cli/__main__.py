from kebr_cli.main import run

run()

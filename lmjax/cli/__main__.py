from lmjax.cli.main import run

run()

from vqcodec.cli.main import app

app(prog_name="vqcodec")

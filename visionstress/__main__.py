"""`python -m visionstress ...` (and `torchrun ... -m visionstress run ...`): the command line."""

from visionstress.cli import app

app(prog_name="visionstress")

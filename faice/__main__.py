"""``python -m faice``."""

from faice.cli import console

console()

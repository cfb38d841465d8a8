"""``python -m gfwlab``: the same as the ``gfwlab`` command."""

from gfwlab.cli import main

main()

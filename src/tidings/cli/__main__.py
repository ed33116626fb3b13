"""``python -m tidings.cli`` is the ``tidings`` command."""

from tidings.cli import main

main()

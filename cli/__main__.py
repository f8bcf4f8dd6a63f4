"""``python -m cli ...`` is the ``fedq`` command (what ``fedq run`` spawns)."""

from cli.main import main

main()

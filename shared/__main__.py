"""``python -m shared ...`` is the ``fedq`` command (what ``fedq run`` spawns)."""

from shared.cli import main

main()

"""The fedq command: one package of click commands over the library API.

``fedq`` is ``cli.main:main``; ``python -m cli`` is the same command (what ``fedq run`` spawns).
"""

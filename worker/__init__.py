"""The regional worker side of fedq (RQ tasks and the worker process)."""

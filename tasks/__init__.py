"""fedq's tasks: the plug-in boundary (``tasks.api``) and the built-in tasks."""

"""The pipeline's stages: one module per stage, each exposing `STAGE` (a
`artifact.core.runner.Stage`).

Only the CLI imports this package; stages hand each other files in the run directory, never
Python objects.
"""

from __future__ import annotations

import importlib

from artifact.core.runner import Stage


def load_stage(name: str) -> Stage | None:
    """The stage object, or None when its module does not exist yet."""
    module_name = f"{__name__}.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    return module.STAGE

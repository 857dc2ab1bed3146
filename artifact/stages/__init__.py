"""The pipeline's stages: one module per stage, each exposing `STAGE` (a
`artifact.core.runner.Stage`).

Only the CLI imports this package; stages hand each other files in the run directory, never
Python objects.
"""

from __future__ import annotations

import importlib

from artifact.core.runner import Stage


def load_stage(name: str) -> Stage:
    """The stage object of module `artifact.stages.<name>`."""
    return importlib.import_module(f"{__name__}.{name}").STAGE

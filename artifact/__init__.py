"""Reproducible artifact for a study of Mixture-of-Experts inference performance.

`python -m artifact` and the `moe-artifact` console script run the stages and tools;
see README.md for the pipeline and `artifact.stages` for the stage registry.
"""

__version__ = "0.1.0"

"""monobench: preference optimisation vs monosemanticity, from preference data to SAE scores."""

from importlib.metadata import version

__version__ = version("monobench")
"""The installed package's version (pyproject.toml is its one source)."""

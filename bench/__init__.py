"""monobench: preference optimisation vs monosemanticity, from preference data to SAE scores."""

__version__ = "0.1.0"

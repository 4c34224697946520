"""zigzag: the optimization geometry of deep networks, measured by gradient correlations."""

__version__ = "0.1.0"

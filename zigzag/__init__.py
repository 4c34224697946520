"""zigzag: the optimization geometry of deep networks, measured by gradient correlations."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``zigzag.Recorder``, imported on first use: ``import zigzag`` stays free of torch."""
    if name == "Recorder":
        from zigzag.recorder import Recorder

        return Recorder
    raise AttributeError(f"module 'zigzag' has no attribute {name!r}")

"""vpsadmind: the node agent of a vpsAdmin cluster (v2.0 transaction queue, asyncio)."""

__all__ = ["__version__"]

__version__ = "0.1.0"

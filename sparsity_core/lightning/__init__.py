"""Lightning integration: :class:`SparsityCallback`."""
from .callback import SparsityCallback

__all__ = ["SparsityCallback"]

"""Message-passing layers (PyG) used by the learned solvers."""

from .layers import SystemConv

__all__ = ["SystemConv"]

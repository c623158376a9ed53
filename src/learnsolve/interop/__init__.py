"""Bridges from other array frameworks (JAX, TensorFlow) to the torch solver core: numpy in, numpy out."""

from .host import HostResult, host_solve, sparse_operator

__all__ = ["HostResult", "host_solve", "sparse_operator"]

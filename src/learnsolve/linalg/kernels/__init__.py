"""Compiled CPU kernels (numba) on plain NumPy arrays: sparse triangular solves and factorisations, the fused
(P)CG iteration (one system per thread, and one large system on several threads), the multigrid cycle and
MIC(0). No torch here.
"""

"""Preconditioners with transposes: the base class, Jacobi / IC(0) / MIC(0) / ILU(0) / learned factors,
triangular solves, AMG (pyamg), differentiable smoothed-aggregation multigrid, coarse-corrected subdomains and
the setup-time safeguard for learned preconditioners.
"""

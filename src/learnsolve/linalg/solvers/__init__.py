"""Solvers on operators: the batched Krylov methods (torch iterations), the compiled CG path that replaces
CG's iteration when nothing is recorded, direct factorisations, Lanczos spectral estimates, and what a solve
reports.
"""

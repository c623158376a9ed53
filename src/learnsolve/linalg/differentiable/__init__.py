"""The differentiable solve: ``solve`` (implicit, unrolled, truncated and stochastic backward), Hessian-vector
products, the stochastic adjoint, solve recording / backward overrides, and ``local_solve``.
"""

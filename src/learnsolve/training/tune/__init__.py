"""Tune a learned factor preconditioner on ONE matrix, for users who solve with that matrix many times.

:func:`tune_matrix` takes a trained model whose per-matrix preconditioner is a factor ``M = L L^T``
(neural_if) and a symmetric positive definite matrix, and returns a :class:`TuneResult`: the tuned factor (or
the reason it was not tuned), and iterations and milliseconds per solve of the tuned factor, the model before
tuning, IC(0), MIC(0) and AMG-SA on the matrix, the tuning time and the number of solves after which the
tuning has paid for itself.

What is tuned. The start is the factor with the fewest PCG iterations on the matrix among the model's own
(safeguarded) preconditioner, IC(0) and MIC(0). Its entries are then corrected in the model's own
parameterisation (:class:`learnsolve.models.neural_if.NeuralIF`: ``L_ii = B_ii exp(w_ii)``,
``L_ij = B_ij + a_ij / sqrt(a_jj) w_ij`` on the pattern of tril(A)), one free correction per stored entry, all
starting at zero. Tuning the network's weights instead (a few hundred numbers shared by every entry) did not
lower the iterations on real matrices: the matrix's own entries need their own corrections.

The loss. For 8 Gaussian probes x* (b = A x*), ``K`` PCG iterations from x0 = 0 with the current factor are
unrolled and differentiated: ``mean log(||x* - x_K||_A^2 / ||x* - x_0||_A^2)``, the CG error energy after K
steps. In the first half of the budget ``K`` is half of the current iteration count on the matrix, in the
second half (which starts again from the best factor) the whole count (2 to 60 either way): which of the two
lowers the count differs from matrix to matrix (bcsstk03: 38 iterations with half, none lower with the whole;
unit_square: the other way round). Adam (step size 1e-2); every 5 steps (less often where these solves would
take more than about half of the time) the factor's PCG iterations on three validation right-hand sides (the
user's ``rhs`` columns, filled up with seeded Gaussian ones; the first is the table's b) are measured, the
factor with the fewest in total is kept, and where a step made them more than 1.5x the best (or broke the
solve), or 20 measurements and a quarter of the budget passed without a new best, the best factor is restored
and the step size halved (bar: 48 iterations at a fixed 1e-2, 44 with the halving).

The end decision (the safeguard of tuning): the tuned factor is kept only if full PCG solves on three other
seeded Gaussian right-hand sides, never used in tuning, take fewer iterations in total than with the start
factor and at most 1.1x the start's on each; otherwise the start factor is returned and the result says "not
tuned: ...". (Selecting on one right-hand side overfitted it: unit_square 16 against 19 iterations on it, 20
against 19 on another.)
"""

from ._command import TuneRun, plot_tuning, run_tune
from ._core import (
    CLASSICAL,
    MAX_UNROLLED,
    ROWS,
    TITLES,
    TuneError,
    TuneResult,
    check_rhs,
    check_spd_like,
    energy_loss,
    tunable_reason,
    tune_matrix,
    unrolled_size,
)
from ._measure import Row, break_even, measure, retime_solves

__all__ = ["CLASSICAL", "MAX_UNROLLED", "ROWS", "TITLES", "Row", "TuneError", "TuneResult", "TuneRun",
           "break_even", "check_rhs", "check_spd_like", "energy_loss", "measure", "plot_tuning",
           "retime_solves", "run_tune", "tunable_reason", "tune_matrix", "unrolled_size"]

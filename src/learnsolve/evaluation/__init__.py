"""learnsolve.evaluation: run learned solvers and classical baselines on benchmark suites; tables and plots.

- :func:`evaluate` (``evaluate(cfg)``): the whole evaluation a composed ``conf/evaluate.yaml`` describes
  (``python scripts/evaluate.py ckpt_path=... benchmark=...`` / ``learnsolve-evaluate`` is its CLI);
- :data:`BASELINES` (:mod:`.baselines`): the one registry of classical preconditioners every comparison uses;
- :func:`evaluate_suite` / :func:`evaluate_matrix`: one row per (matrix, preconditioner) -- iterations to each
  rtol, setup / solve / total seconds, the true final relative residual, the ratio to IC(0) and a status;
- :func:`compare_gradient_methods` (:mod:`.compare`): implicit / unrolled / truncated / stochastic gradients
  of a solve with the user's own A and b against finite differences (general directions) and the exact
  gradient;
- :func:`evaluate_surrogate`: the metrics of a surrogate model over its test set;
- :func:`write_results` / :func:`write_surrogate_results`: ``results.csv``, ``results.json``,
  ``results.md`` and the convergence / summary plots; :func:`log_wandb` sends them to a W&B run.
"""

from .baselines import BASELINES, Baseline, build_baseline, training_baselines
from .compare import compare_gradient_methods
from .pipeline import EvaluationConfigError, EvaluationResult, evaluate
from .report import (
    log_wandb,
    markdown_table,
    surrogate_markdown_table,
    write_results,
    write_surrogate_results,
)
from .runner import (
    PRECONDITIONERS,
    SOLVERS,
    STATUSES,
    MatrixInfo,
    classify,
    columns,
    evaluate_matrix,
    evaluate_suite,
    evaluate_surrogate,
    exit_code,
)

__all__ = [
    "BASELINES",
    "PRECONDITIONERS",
    "SOLVERS",
    "STATUSES",
    "Baseline",
    "EvaluationConfigError",
    "EvaluationResult",
    "MatrixInfo",
    "build_baseline",
    "classify",
    "columns",
    "compare_gradient_methods",
    "evaluate",
    "evaluate_matrix",
    "evaluate_suite",
    "evaluate_surrogate",
    "exit_code",
    "log_wandb",
    "markdown_table",
    "surrogate_markdown_table",
    "training_baselines",
    "write_results",
    "write_surrogate_results",
]

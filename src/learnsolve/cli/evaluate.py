"""``python scripts/evaluate.py ckpt_path=PATH benchmark=generated|pyamg|matrix_market [benchmark.path=DIR]``
(``learnsolve-evaluate``): a trained checkpoint against classical preconditioners on benchmark matrices; the
work is :func:`learnsolve.evaluation.evaluate` (see ``conf/evaluate.yaml`` for the options).

Exit status: 0 when at least one (matrix, preconditioner) was evaluated, 1 when nothing could be,
2 for bad arguments (missing or unreadable checkpoint, unknown benchmark, bad options).
"""

from __future__ import annotations

import sys

from ._hydra import run_command


def evaluate_command(cfg) -> int:
    from learnsolve.evaluation import evaluate, exit_code

    result = evaluate(cfg)
    print(result.table)
    plots = " and plots/" if not result.surrogate and cfg.plots else ""
    print(f"\nresults: {result.output_dir}/results.md (.csv, .json){plots}")
    code = exit_code(result.rows)
    if code:
        print("learnsolve-evaluate: nothing could be evaluated (every row was skipped, failed or unreadable)",
              file=sys.stderr)
    return code


def main() -> int:
    from learnsolve.evaluation import EvaluationConfigError
    from learnsolve.models.checkpoint import CheckpointError

    return run_command("learnsolve-evaluate", "evaluate", evaluate_command,
                       (EvaluationConfigError, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation: scores on plain arrays, beside the prior baseline.

`metrics` holds the score functions (imported by training and benchmarks too), `report` the
HTML report, `plots` its figures, `int8` the int8 quality check. Scoring a run on a dataset
split (loading it, reading posters) is `postergenre.scoring.evaluate_run`, a layer above.
"""

from postergenre.evaluate.metrics import (
    HEADLINE,
    average_precision,
    compare_with_prior,
    evaluate_scores,
    prior_scores,
    roc_auc,
    top_k_hit,
    tune_thresholds,
)

__all__ = [
    "HEADLINE",
    "average_precision",
    "compare_with_prior",
    "evaluate_scores",
    "prior_scores",
    "roc_auc",
    "top_k_hit",
    "tune_thresholds",
]

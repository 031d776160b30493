"""dmr-keras tuning: keras-tuner searches over depth, width and branch count (issue 5).

- :class:`DMRHyperModel`: the search space (blocks per stage, width, branches, mapping, learning
  rate, weight decay, batch size) with an optional parameter budget.
- :func:`make_tuner`: a random / Bayesian / Hyperband tuner whose oracle skips configurations
  over the budget (never built, trained or counted as failed).
- :func:`tune` and ``dmr-tune``: the whole search on a dataset, with a leaderboard, the best
  model (``best.keras`` + ``best.json``), TensorBoard logs, and resume after a kill.
"""

from tuning.hypermodel import DMRHyperModel, architecture, count_params
from tuning.search import (
    MANIFEST_FORMAT,
    TUNERS,
    BudgetBayesianOptimizationOracle,
    BudgetHyperbandOracle,
    BudgetRandomSearchOracle,
    leaderboard,
    load_best,
    make_tuner,
    tune,
)

__all__ = [
    "MANIFEST_FORMAT",
    "TUNERS",
    "BudgetBayesianOptimizationOracle",
    "BudgetHyperbandOracle",
    "BudgetRandomSearchOracle",
    "DMRHyperModel",
    "architecture",
    "count_params",
    "leaderboard",
    "load_best",
    "make_tuner",
    "tune",
]

"""dmr-keras tuning: keras-tuner searches over depth, width and branch count (issue 5).

- :class:`DMRHyperModel`: the search space (blocks per stage, width, branches, mapping, learning
  rate, weight decay, batch size) with an optional parameter budget.
- :func:`make_tuner`: a random / Bayesian / Hyperband tuner whose oracle skips configurations
  over the budget (never built, trained or counted as failed).
- :func:`tune` and ``dmr-tune``: the whole search on a dataset, with a leaderboard, the best
  model (``best.keras`` + ``best.json``), TensorBoard logs, and resume after a kill.
"""

from __future__ import annotations

from dmr_keras.startup import lazy_exports

_EXPORTS = {
    "DMRHyperModel": "tuning.hypermodel",
    "architecture": "tuning.hypermodel",
    "count_params": "tuning.hypermodel",
    "MANIFEST_FORMAT": "tuning.search",
    "TUNERS": "tuning.search",
    "BudgetBayesianOptimizationOracle": "tuning.search",
    "BudgetHyperbandOracle": "tuning.search",
    "BudgetRandomSearchOracle": "tuning.search",
    "leaderboard": "tuning.search",
    "load_best": "tuning.search",
    "make_tuner": "tuning.search",
    "tune": "tuning.search",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("tuning", _EXPORTS, globals())  # keras-tuner on first use

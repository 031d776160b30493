"""dmr-keras tuning: keras-tuner searches over depth, width and branch count (issue 5).

- :mod:`tuning.budget`: closed-form parameter and MAC counts (:func:`count_params`,
  :func:`count_macs`), so budgets are checked without building anything.
- :class:`DMRHyperModel` (:mod:`tuning.hypermodel`): the search space (blocks per stage, width,
  branches, mapping, learning rate, weight decay, batch size) with optional budgets on
  parameters and MACs.
- :func:`make_tuner` (:mod:`tuning.oracles`): a random / Bayesian / Hyperband tuner whose oracle
  skips configurations over the budgets (never built, trained or counted as failed).
- :mod:`tuning.results`: the leaderboard, the Pareto front (:func:`pareto_front`,
  ``pareto.csv``, ``pareto.png``) and the best model (``best.keras`` + ``best.json``).
- :func:`tune` and ``dmr-tune`` (:mod:`tuning.search`, :mod:`tuning.cli`): the whole search on a
  dataset, scored on a held-out part of the training split, the test split touched once by the
  best model; TensorBoard logs, and resume after a kill.
"""

from __future__ import annotations

from dmr_keras.startup import lazy_exports

_EXPORTS = {
    "DMRHyperModel": "tuning.hypermodel",
    "architecture": "tuning.hypermodel",
    "count_macs": "tuning.budget",
    "count_params": "tuning.budget",
    "MANIFEST_FORMAT": "tuning.results",
    "TUNERS": "tuning.cli",
    "BudgetBayesianOptimizationOracle": "tuning.oracles",
    "BudgetHyperbandOracle": "tuning.oracles",
    "BudgetRandomSearchOracle": "tuning.oracles",
    "leaderboard": "tuning.results",
    "load_best": "tuning.results",
    "make_tuner": "tuning.oracles",
    "pareto_front": "tuning.results",
    "tune": "tuning.search",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("tuning", _EXPORTS, globals())  # keras-tuner on first use

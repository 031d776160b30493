"""What a search leaves behind: the leaderboard, the Pareto front, the best model.

- :func:`leaderboard`: one row per trial and per architecture skipped as over budget (CSV, JSON
  and a text table);
- :func:`pareto_front`, :func:`write_pareto`: the completed trials that no other trial beats on
  both validation accuracy and cost (parameters or MACs), as ``pareto.csv`` and ``pareto.png``;
- :func:`export_best`: the best trial's model as ``best.keras`` with its manifest ``best.json``
  (validation accuracy, and the one evaluation on the test split); :func:`load_best` reads it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from dmr_keras.atomic import atomic_path, write_json, write_text
from tuning.hypermodel import HP_NAMES, architecture, architecture_key

MANIFEST_FORMAT = "dmr-keras-tuning-best/1"
LEADERBOARD_COLUMNS = ("rank", "trial_id", "status", "n", "width", "branches", "mapping", "lr",
                       "weight_decay", "batch_size", "params", "macs", "val_accuracy",
                       "test_accuracy", "time_s", "note")
PARETO_COLUMNS = ("trial_id", "n", "width", "branches", "mapping", "lr", "weight_decay",
                  "batch_size", "params", "macs", "val_accuracy", "params_front", "macs_front")
COSTS = ("params", "macs")


def _metric(trial, name):
    if trial.metrics.exists(name):
        value = trial.metrics.get_last_value(name)
        return None if value is None else float(value)
    return None


def leaderboard(tuner) -> list:
    """One row per trial and per skipped architecture, best validation accuracy first.

    Statuses: ``completed``, ``failed`` (keras-tuner's FAILED or INVALID), ``running`` (a trial
    that was interrupted and not yet re-run) and ``skipped`` (over ``max_params`` or
    ``max_macs``; ``note`` says which and how often the oracle drew and rejected it).
    ``val_accuracy`` is measured on the held-out part of the training split; ``test_accuracy``
    is None here (:func:`export_best` fills it in for the best trial only).
    """
    model = tuner.hypermodel
    trials = []
    for trial in tuner.oracle.trials.values():
        values = trial.hyperparameters.values
        arch = architecture(values)
        status = {"COMPLETED": "completed", "FAILED": "failed", "INVALID": "failed"}.get(
            trial.status, str(trial.status).lower())
        params = _metric(trial, "params")
        note = ""
        if status == "failed" and trial.message:
            lines = [ln for ln in str(trial.message).strip().splitlines() if ln.strip()]
            note = lines[-1][:200] if lines else ""
        elif "tuner/trial_id" in values:
            note = (f"hyperband round {values.get('tuner/round')}, continues trial "
                    f"{values['tuner/trial_id']}")
        trials.append({
            "rank": None, "trial_id": trial.trial_id, "status": status, **arch,
            "lr": values.get("lr"), "weight_decay": values.get("weight_decay"),
            "batch_size": values.get("batch_size"),
            "params": int(params) if params is not None else model.params_of(values),
            "macs": model.macs_of(values),
            "val_accuracy": float(trial.score) if status == "completed" and trial.score is not None
            else None,
            "test_accuracy": None,
            "time_s": _metric(trial, "time_s"), "note": note,
        })
    done = sorted((r for r in trials if r["val_accuracy"] is not None),
                  key=lambda r: (-r["val_accuracy"], r["trial_id"]))
    for i, row in enumerate(done, start=1):
        row["rank"] = i
    others = sorted((r for r in trials if r["val_accuracy"] is None),
                    key=lambda r: r["trial_id"])
    skipped = []
    drawn = getattr(tuner.oracle, "skipped", {})
    for arch in sorted(model.architectures(), key=lambda a: (a["params"], architecture_key(a))):
        excess = model.budget_excess(arch)
        if not excess:
            continue
        proposals = drawn.get(architecture_key(arch), {}).get("proposals", 0)
        skipped.append({
            "rank": None, "trial_id": None, "status": "skipped",
            **{k: arch[k] for k in ("n", "width", "branches", "mapping")},
            "lr": None, "weight_decay": None, "batch_size": None, "params": arch["params"],
            "macs": arch["macs"], "val_accuracy": None, "test_accuracy": None, "time_s": None,
            "note": f"{'; '.join(excess)}; not built or trained (oracle rejected {proposals} "
                    "draw(s))",
        })
    return done + others + skipped


def format_leaderboard(rows) -> str:
    headers = ("#", "trial", "n", "w", "K", "mapping", "lr", "wd", "batch", "params",
               "MMACs", "val acc", "test acc", "time s", "status")

    def cell(value, fmt="{}"):
        return "-" if value is None else fmt.format(value)

    table = [headers]
    for r in rows:
        table.append((cell(r["rank"]), cell(r["trial_id"]), cell(r["n"]), cell(r["width"], "{:g}"),
                      cell(r["branches"]), r["mapping"], cell(r["lr"], "{:g}"),
                      cell(r["weight_decay"], "{:g}"), cell(r["batch_size"]),
                      cell(r["params"], "{:,}"),
                      cell(None if r["macs"] is None else r["macs"] / 1e6, "{:.2f}"),
                      cell(r["val_accuracy"], "{:.4f}"), cell(r["test_accuracy"], "{:.4f}"),
                      cell(r["time_s"], "{:.1f}"), r["status"]))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(headers))]
    lines = ["  ".join(str(v).rjust(w) for v, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _csv(rows, columns) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    return buf.getvalue()


def _leaderboard_csv(rows) -> str:
    return _csv(rows, LEADERBOARD_COLUMNS)


# ---- the Pareto front -----------------------------------------------------------------------


def pareto_front(rows, cost: str = "params") -> list:
    """The completed rows that no other completed row dominates, cheapest first.

    Row ``b`` dominates row ``a`` when ``b`` costs no more (``cost``: ``"params"`` or
    ``"macs"``), is no less accurate (``val_accuracy``) and is strictly better in one of the two.
    Rows without a validation accuracy or a cost are left out; rows equal in both are all kept.

    >>> rows = [dict(trial_id="a", params=10, val_accuracy=0.5),
    ...         dict(trial_id="b", params=20, val_accuracy=0.4),
    ...         dict(trial_id="c", params=30, val_accuracy=0.9)]
    >>> [r["trial_id"] for r in pareto_front(rows)]
    ['a', 'c']
    """
    if cost not in COSTS:
        raise ValueError(f"Unknown `cost`: {cost!r}. Valid values: {', '.join(COSTS)}")
    done = [r for r in rows if r.get("val_accuracy") is not None and r.get(cost) is not None]

    def dominates(b, a):
        no_worse = b[cost] <= a[cost] and b["val_accuracy"] >= a["val_accuracy"]
        return no_worse and (b[cost] < a[cost] or b["val_accuracy"] > a["val_accuracy"])

    front = [a for a in done if not any(dominates(b, a) for b in done)]
    return sorted(front, key=lambda r: (r[cost], -r["val_accuracy"], str(r.get("trial_id"))))


def pareto_rows(rows) -> list:
    """The completed rows on the parameter front or the MAC front, with ``params_front`` and
    ``macs_front`` flags, by parameter count (what ``pareto.csv`` holds)."""
    fronts = {c: {id(r) for r in pareto_front(rows, c)} for c in COSTS}
    out = [{**r, "params_front": id(r) in fronts["params"], "macs_front": id(r) in fronts["macs"]}
           for r in rows if any(id(r) in f for f in fronts.values())]
    return sorted(out, key=lambda r: (r["params"], -r["val_accuracy"], str(r["trial_id"])))


def write_pareto(rows, project_dir) -> list:
    """``pareto.csv`` (:func:`pareto_rows`) and ``pareto.png`` (validation accuracy against
    parameters and against MACs: every completed trial, the front as a line) in
    ``project_dir``; returns the rows written. The plot uses matplotlib's object API (no
    pyplot, so no global backend change)."""
    project_dir = Path(project_dir)
    front = pareto_rows(rows)
    write_text(project_dir / "pareto.csv", _csv(front, PARETO_COLUMNS))
    done = [r for r in rows if r.get("val_accuracy") is not None]
    if not done:
        return front
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    costs = [c for c in COSTS if all(r.get(c) is not None for r in done)]
    fig = Figure(figsize=(5 * len(costs), 4), layout="constrained")
    for i, cost in enumerate(costs, start=1):
        ax = fig.add_subplot(1, len(costs), i)
        ax.scatter([r[cost] for r in done], [r["val_accuracy"] for r in done], s=14,
                   color="0.6", label="trials")
        line = pareto_front(rows, cost)
        ax.step([r[cost] for r in line], [r["val_accuracy"] for r in line], where="post",
                marker="o", color="C0", label="Pareto front")
        for r in line:
            ax.annotate(f"#{r['trial_id']} {architecture_key(r)}", (r[cost], r["val_accuracy"]),
                        fontsize=6,
                        xytext=(3, -8), textcoords="offset points")
        ax.set_xscale("log")
        # Labels at 1, 2, 5 x 10^k as 40k, 100k, 2M: a front within a decade or two gets
        # readable ticks (matplotlib's minor log labels overlap there).
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("parameters" if cost == "params" else "MACs per image")
        ax.set_ylabel("validation accuracy (held out from train)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    with atomic_path(project_dir / "pareto.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return front


def export_best(tuner, rows, project_dir, extra=None, test_data=None) -> dict | None:
    """Save the best completed trial's model (its best epoch) as ``best.keras`` and the
    manifest ``best.json`` beside it; return the manifest (None without a completed trial).

    ``test_data``: a batched dataset of the test split. The best model, and only it, is
    evaluated on it once: ``test_accuracy`` in the manifest and in the best row of ``rows``
    (updated in place).
    """

    best = next((r for r in rows if r["status"] == "completed"), None)
    if best is None:
        return None
    project_dir = Path(project_dir)
    trial = tuner.oracle.get_trial(best["trial_id"])
    values = {k: v for k, v in trial.hyperparameters.values.items() if k in HP_NAMES}
    model = tuner.hypermodel.build(trial.hyperparameters.copy())  # outside any strategy scope
    if model.optimizer is not None:
        model.optimizer.build(model.trainable_variables)  # the checkpoint holds its state too
    model.load_weights(tuner._get_checkpoint_fname(trial.trial_id))  # the best epoch's weights
    test_accuracy = None
    if test_data is not None:
        scores = model.evaluate(test_data, verbose=0, return_dict=True)
        test_accuracy = best["test_accuracy"] = float(scores["accuracy"])
    with atomic_path(project_dir / "best.keras") as tmp:
        model.save(tmp)
    manifest = {
        "format": MANIFEST_FORMAT,
        "model_path": "best.keras",
        "trial_id": trial.trial_id,
        "hyperparameters": values,
        "build_kwargs": tuner.hypermodel.build_kwargs(values),
        "val_accuracy": best["val_accuracy"],
        "test_accuracy": test_accuracy,
        "params": best["params"],
        "macs": best["macs"],
        **(extra or {}),
    }
    write_json(project_dir / "best.json", manifest)
    return manifest


def load_best(path):
    """The best model of a search: ``path`` is a ``best.json`` manifest or the project folder
    holding it. The manifest's ``model_path`` is relative to the manifest's folder."""
    import keras

    import dmr_keras  # noqa: F401  (registers the layers for deserialization)

    path = Path(path)
    manifest_path = path / "best.json" if path.is_dir() else path
    if not manifest_path.is_file():
        raise ValueError(f"No tuning manifest at {manifest_path} (expected best.json from "
                         "dmr-tune).")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{manifest_path} is not a dmr-tune manifest (format "
                         f"{manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}).")
    return keras.saving.load_model(manifest_path.parent / manifest["model_path"])

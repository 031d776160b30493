"""tuning.budget and the budgets of a search: closed-form counts, nothing over budget built."""

import math

import pytest

import tuning.hypermodel
from dmr_keras import build_model
from dmr_keras.flops import count_macs as built_macs
from tuning import DMRHyperModel, tune
from tuning.budget import count_macs, count_params


@pytest.mark.parametrize("n, width, k, mapping, classes, shape", [
    (1, 0.5, 2, "merge_and_run", 10, (32, 32, 3)),
    (2, 1.0, 3, "merge_and_run", 7, (32, 32, 3)),
    (1, 1.0, 3, "identity", 10, (33, 31, 1)),  # odd sizes: stride 2 gives ceil(H / 2)
    (2, 0.25, 1, "resnet", 100, (32, 32, 3)),
    (1, 0.5, 1, "merge_and_run", 10, (24, 40, 3)),  # K = 1 merge-and-run: a ResNet
])
def test_closed_form_counts_equal_the_built_model(n, width, k, mapping, classes, shape):
    model = build_model(blocks=(n, n, n), width=width, num_branches=k, mapping=mapping,
                        classes=classes, input_shape=shape)
    params = sum(math.prod(w.shape) for w in model.trainable_weights)
    assert count_params(n, width, k, mapping, classes, shape[-1]) == params
    assert count_macs(n, width, k, mapping, classes, shape) == built_macs(model)


def test_closed_form_counts_equal_the_zoo_tables():
    # The zoo's CIFAR variants record params and MACs measured on built models.
    from zoo.variants import VARIANTS

    checked = 0
    for name, v in VARIANTS.items():
        kw = v.config
        if kw.get("form") != "cifar":
            continue
        n = (kw["depth"] - 2) // 6
        args = (n, kw["width"], kw["num_branches"], kw["mapping"])
        assert count_params(*args) == v.params, name
        assert count_macs(*args) == v.macs, name
        checked += 1
    assert checked >= 8


def test_mac_budget_needs_a_fixed_image_size_and_a_model_that_fits():
    with pytest.raises(ValueError, match="`max_macs` needs a fixed image size"):
        DMRHyperModel(max_macs=10**9, input_shape=(None, None, 3))
    smallest = count_macs(1, 0.5, 1)
    with pytest.raises(ValueError, match=f"`max_macs`=1 is below the smallest model of the search "
                                         f"space, n=1,w=0.5,K=1,resnet with {smallest:,} MACs"):
        DMRHyperModel(depths_n=(1,), widths=(0.5,), branches=(1,), max_macs=1)


def test_budget_excess_names_each_budget():
    hm = DMRHyperModel(depths_n=(1,), widths=(0.5, 1), branches=(1, 2),
                       max_params=100_000, max_macs=10_000_000)
    w1k2 = {"n": 1, "width": 1.0, "branches": 2, "mapping": "merge_and_run"}
    excess = hm.budget_excess(w1k2)
    assert len(excess) == 2 and "max_params 100,000" in excess[0] and \
        "max_macs 10,000,000" in excess[1]
    assert hm.budget_excess({"n": 1, "width": 1.0, "branches": 1}) == [
        f"{count_macs(1, 1.0, 1):,} MACs > max_macs 10,000,000"]
    assert not hm.over_budget({"n": 1, "width": 0.5, "branches": 2})


def test_no_over_budget_configuration_is_ever_built(tmp_path, monkeypatch):
    """A real search, with the builder patched to record every model it builds."""
    max_params, max_macs = 100_000, 10_000_000
    space = dict(depths_n=(1,), widths=(0.5, 1), branches=(1, 2), lrs=(0.1, 0.05),
                 weight_decays=(1e-4,), batch_sizes=(32,))
    hm = DMRHyperModel(**space, max_params=max_params, max_macs=max_macs)
    by_macs_only = [a for a in hm.architectures()
                    if a["params"] <= max_params and a["macs"] > max_macs]
    by_params = [a for a in hm.architectures() if a["params"] > max_params]
    assert by_macs_only and by_params  # the space tests both budgets

    built = []
    real = tuning.hypermodel.build_model

    def recording_build_model(**kwargs):
        model = real(**kwargs)
        built.append((kwargs["blocks"], kwargs["width"], kwargs["num_branches"],
                      kwargs["mapping"], sum(math.prod(w.shape) for w in model.trainable_weights),
                      built_macs(model)))
        return model

    monkeypatch.setattr(tuning.hypermodel, "build_model", recording_build_model)
    result = tune("digits", max_trials=3, epochs=1, seed=3, directory=str(tmp_path),
                  project="p", max_params=max_params, max_macs=max_macs, max_train_examples=64,
                  verbose=0, **space)
    assert built and result["completed"] >= 2
    for blocks, width, k, mapping, params, macs in built:
        assert params <= max_params and macs <= max_macs, (blocks, width, k, mapping)
    skipped = [r for r in result["leaderboard"] if r["status"] == "skipped"]
    assert len(skipped) == len(by_macs_only) + len(by_params)
    assert any("MACs > max_macs" in r["note"] and "params >" not in r["note"] for r in skipped)
    for r in result["leaderboard"]:
        if r["status"] == "completed":
            assert r["params"] <= max_params and r["macs"] <= max_macs

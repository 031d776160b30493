"""The registry: every variant through the shared test, parameter counts against the paper."""

import numpy as np
import pytest

import zoo
from dmr_keras.flops import count_macs
from tests.helpers import run_model_test

ALL = zoo.list_models()
# Full-size models too big for a save/load round trip in the default run: the shared test runs on
# the same architecture at a smaller width (and input); the full size is checked by count only.
SHRINK = {
    "dmrnet_32_w4": dict(width=0.5),
    "dmrnet_50_w4": dict(width=0.5),
    "dmrnet_44_imagenet": dict(width=0.125, input_shape=(32, 32, 3)),
    "dmrnet_50_imagenet": dict(width=0.125, input_shape=(32, 32, 3)),
    "resnet_101_imagenet": dict(width=0.125, input_shape=(32, 32, 3)),
}


def _trainable(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def test_registry_has_the_issue_names():
    required = {"dmrnet_56", "dmrnet_32_w4", "dmrnet_50_w4", "dilnet_56", "resnet_110",
                "dmrnet_38_k3", "dmrnet_44_imagenet", "dmrnet_50_imagenet", "resnet_101_imagenet"}
    assert required <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_variant_shared_model_test(name, tmp_path):
    overrides = dict(SHRINK.get(name, {}), classes=3)
    model = zoo.create_model(name, **overrides)
    shape = overrides.get("input_shape", tuple(zoo.model_info(name)["input_shape"]))
    x = np.random.default_rng(0).random((2, *shape)).astype("float32")
    run_model_test(model, x, (2, 3), tmp_path)


@pytest.mark.parametrize("name", ALL)
def test_variant_parameter_count(name):
    info = zoo.model_info(name)
    model = zoo.create_model(name)
    assert _trainable(model) == info["params"]
    assert count_macs(model) == info["macs"] and info["flops"] == 2 * info["macs"]
    assert model.output_shape == (None, info["classes"])
    target = info.get("reference_params") or info["paper"].get("params")
    if target:
        assert abs(info["params"] - target) / target < 0.02, (info["params"], target)


def test_dmrnet_56_matches_resnet_110_budget():
    # The paper's pairing: a DMRNet of depth 6n+2 has a ResNet-(12n+2)'s parameter count.
    a, b = (zoo.model_info(n)["params"] for n in ("dmrnet_56", "resnet_110"))
    assert abs(a - b) / b < 0.02
    k3 = zoo.model_info("dmrnet_38_k3")["params"]
    assert abs(k3 - a) / a < 0.02


def test_model_info_card():
    info = zoo.model_info("dmrnet_56")
    assert info["depth"] == 56 and info["width"] == 1 and info["num_branches"] == 2
    assert info["mapping"] == "merge_and_run" and info["blocks"] == [9, 9, 9]
    assert info["paper"]["errors"] == {"cifar10": 4.94, "cifar100": 24.46, "svhn": 1.66}
    assert zoo.model_info("dmrnet_50_imagenet")["blocks"] == [1, 2, 11, 2]
    assert zoo.model_info("resnet_101_imagenet")["depth"] == 101
    assert zoo.model_info("dmrnet_38_k3")["num_branches"] == 3


def test_list_models_wildcards():
    assert zoo.list_models("dilnet_*") == ["dilnet_20", "dilnet_56"]
    assert zoo.list_models("*_imagenet") == ["dmrnet_44_imagenet", "dmrnet_50_imagenet",
                                             "resnet_101_imagenet"]
    assert zoo.list_models("nothing*") == []


@pytest.mark.parametrize("bad, suggestion", [("dmrnet56", "dmrnet_56"),
                                             ("resnet_101", "resnet_101_imagenet")])
def test_unknown_name_lists_close_matches(bad, suggestion):
    for fn in (zoo.create_model, zoo.model_info):
        with pytest.raises(ValueError) as err:
            fn(bad)
        assert f"Unknown model name {bad!r}" in str(err.value)
        assert suggestion in str(err.value).split("Did you mean:")[1]


def test_unknown_override_is_an_error():
    with pytest.raises(ValueError, match=r"Unknown argument\(s\) for create_model\('dmrnet_14'\): "
                                         r"\['clases'\]"):
        zoo.create_model("dmrnet_14", clases=5)


def test_overrides_reach_the_builder():
    model = zoo.create_model("dmrnet_14", include_top=False, pooling="avg", blocks=(1, 1, 1))
    assert model.output_shape == (None, 64)
    assert model.name == "dmrnet_14"

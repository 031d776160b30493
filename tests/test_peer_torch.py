"""The PyTorch peer of the bench (bench/torch_models.py) computes the same network as dmr_keras.

Weights are copied from a Keras model whose every BatchNorm has random statistics, scale and
offset, so a model that used batch statistics (a train-mode trace), skipped a BN, mis-mapped a
weight or padded a stride-2 convolution on one side only would not match.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keras  # noqa: E402

from dmr_keras.models import build_model  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "bench"
SIZE = 16  # even, so the stride-2 stages see even inputs (where one-sided padding would differ)


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tm = _load("torch_models")


def _randomise_bn(model, seed):
    """Random BN statistics and affine parameters (the reference scale: logits of order 1-10)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        leaf = w.path.rsplit("/", 1)[-1]
        shape = tuple(w.shape)
        if leaf in ("gamma", "moving_variance"):
            w.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif leaf in ("beta", "moving_mean", "bias"):
            w.assign(rng.normal(0.0, 0.3, shape).astype("float32"))


def _pair(depth, width, num_branches, mapping, seed=0):
    keras.utils.set_random_seed(seed)
    model = build_model(depth, width=width, num_branches=num_branches, mapping=mapping,
                        input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    _randomise_bn(model, seed)
    net = tm.CifarNet(depth, width=width, num_branches=num_branches, mapping=mapping)
    tm.copy_keras_model(net, model)
    return model, net


def _inputs(n=4, seed=1):
    x = np.random.default_rng(seed).normal(size=(n, SIZE, SIZE, 3)).astype("float32")
    return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


CONFIGS = {  # name: (depth, width, K, mapping)
    "dmrnet_8_k2": (8, 0.5, 2, "merge_and_run"),
    "dmrnet_14_k2": (14, 0.25, 2, "merge_and_run"),
    "dmrnet_8_k3": (8, 0.25, 3, "merge_and_run"),
    "dilnet_8_k2": (8, 0.25, 2, "identity"),
    "resnet_14": (14, 0.5, 1, "resnet"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torch_peer_equals_keras_model_in_inference(name):
    depth, width, k, mapping = CONFIGS[name]
    model, net = _pair(depth, width, k, mapping)
    x, xt = _inputs()
    want = keras.ops.convert_to_numpy(model(x, training=False))
    with torch.inference_mode():
        got = net.eval()(xt).numpy()
    assert np.abs(want).max() > 0.5  # logits of a real scale, not a degenerate zero network
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # the same with PyTorch's channels-last memory format, as the bench runs it
    with torch.inference_mode():
        got_cl = net.to(memory_format=torch.channels_last)(
            xt.to(memory_format=torch.channels_last)).numpy()
    np.testing.assert_allclose(got_cl, want, atol=1e-4, rtol=1e-4)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert tm.count_parameters(net) == trainable


def test_equality_check_can_fail():
    """The same comparison catches a train-mode trace and a wrong skip scale."""
    model, net = _pair(8, 0.5, 2, "merge_and_run")
    x, xt = _inputs()
    want = keras.ops.convert_to_numpy(model(x, training=False))
    with torch.no_grad():
        train_trace = net.train()(xt).numpy()
    assert np.abs(train_trace - want).max() > 1e-2
    with torch.no_grad():  # the merged skip summed instead of averaged
        block = net.eval().stage1_block1
        original = block.forward

        def summed(streams):
            return [2.0 * s for s in original([0.5 * t for t in streams])]

        block.forward = summed
        wrong = net(xt).numpy()
    assert np.abs(wrong - want).max() > 1e-2


def test_training_mode_forward_and_bn_update_match():
    """Batch statistics and the moving-mean update (momentum 0.9 / 0.1) agree too."""
    model, net = _pair(8, 0.5, 2, "merge_and_run")
    x, xt = _inputs(n=8)
    want = keras.ops.convert_to_numpy(model(x, training=True))
    got = net.train()(xt).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    keras_mean = model.get_layer("stage2_block1").branches[0].bns[0].moving_mean.numpy()
    torch_mean = net.stage2_block1.branch1.bn1.running_mean.numpy()
    np.testing.assert_allclose(torch_mean, keras_mean, atol=1e-5, rtol=1e-5)


def test_copy_rejects_missing_and_misshapen_weights():
    model = build_model(8, width=0.5, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    pairs = [(w.path, w.numpy()) for w in model.weights]
    net = tm.CifarNet(8, width=0.5)
    with pytest.raises(ValueError, match="no Keras weight wrote"):
        tm.copy_from_keras(net, pairs[1:])
    with pytest.raises(ValueError, match="PyTorch layout"):
        tm.copy_from_keras(tm.CifarNet(8, width=1.0), pairs)
    with pytest.raises(KeyError, match="no PyTorch counterpart"):
        tm.copy_from_keras(tm.CifarNet(8, width=0.5, mapping="identity"), pairs)


def test_bench_report_tables_and_ratios():
    peer = _load("peer_torch")
    samples = []
    for r in range(3):
        for c, speed in (("keras-tf", 10.0), ("torch-eager", 20.0)):
            for m, f in (("a", 1.0), ("b", 2.0)):
                samples.append({"contender": c, "model": m, "batch": 8, "mode": "training",
                                "repeat": r, "images_per_s": speed * f * (1 + 0.01 * r)})
    args = dict(models=["a", "b"], batches=[8], modes=["training"],
                contenders=["keras-tf", "torch-eager"], reference="torch-eager", repeats=3,
                min_time=0.0, size=8)
    text = peer.report({"args": args, "samples": samples, "machine": {"cpu": "x", "cores": 2},
                        "workers": {}, "check": []})
    assert "| a     |     8 | training |     10.1 |        20.2 |" in text  # medians
    assert "| a     |     8 | training |     0.50 |        1.00 |" in text  # x torch-eager
    assert "| keras-tf    |     8 | training |  0.50 |" in text  # a / b

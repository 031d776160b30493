"""Recipe pieces: schedules, weight decay, atomic writes, checkpoints, weight transfer."""

import json

import keras
import numpy as np
import pytest

from dmr_keras import atomic, training
from dmr_keras.distribute import check_strategy_name
from dmr_keras.multiworker import parse_tf_config
from zoo import create_model


def _lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_paper_schedule_steps_at_half_three_quarters_seven_eighths():
    s = training.learning_rate_schedule("paper", 0.1, epochs=400, steps_per_epoch=10)
    # 4000 steps: boundaries 2000, 3000, 3500
    assert _lr(s, 0) == pytest.approx(0.1)
    assert _lr(s, 1999) == pytest.approx(0.1)
    assert _lr(s, 2001) == pytest.approx(0.01)
    assert _lr(s, 3001) == pytest.approx(0.001)
    assert _lr(s, 3501) == pytest.approx(0.0001)


def test_imagenet_schedule_every_30_epochs_and_cosine():
    s = training.learning_rate_schedule("paper", 0.1, 100, 10, imagenet=True)
    assert [round(_lr(s, e * 10 + 1), 6) for e in (0, 29, 30, 60, 95)] == [
        0.1, 0.1, 0.01, 0.001, 0.0001]
    c = training.learning_rate_schedule("cosine", 0.1, 10, 10)
    assert _lr(c, 0) == pytest.approx(0.1) and _lr(c, 50) == pytest.approx(0.05, abs=1e-6)
    with pytest.raises(ValueError, match="Unknown `schedule`: 'linear'"):
        training.learning_rate_schedule("linear", 0.1, 1, 1)


def test_optimizer_is_nesterov_sgd():
    opt = training.make_optimizer(0.1)
    assert isinstance(opt, keras.optimizers.SGD) and opt.nesterov and opt.momentum == 0.9


def test_weight_decay_is_on_kernels_and_matches_mxnet_wd():
    reg = training.kernel_weight_decay(1e-4)
    w = np.full((3, 3), 2.0, "float32")
    # gradient of (wd/2)||w||^2 is wd * w
    assert float(reg(w)) == pytest.approx(0.5e-4 * 4.0 * 9)
    model = create_model("dmrnet_8_tiny", kernel_regularizer=reg)
    model(np.zeros((1, 32, 32, 3), "float32"))
    n_kernels = sum(1 for w in model.weights if w.path.endswith("kernel"))
    assert len(model.losses) == n_kernels  # every conv and dense kernel, no BN parameter
    assert training.kernel_weight_decay(0) is None
    with pytest.raises(ValueError, match="`weight_decay` must be a number >= 0"):
        training.kernel_weight_decay(-1)


def test_atomic_path_never_leaves_partial_files(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_epoch_checkpoint_and_resume_state(tmp_path):
    model = create_model("dmrnet_8_tiny")
    model.compile(optimizer=training.make_optimizer(0.1), loss="sparse_categorical_crossentropy")
    cb = training.EpochCheckpoint(tmp_path, history={"loss": [3.0]}, keep=2)
    cb.set_model(model)
    assert training.latest_checkpoint(tmp_path) is None
    for epoch in (1, 2, 3):
        cb.on_epoch_end(epoch, {"loss": 2.0 - epoch * 0.1})
    state = training.latest_checkpoint(tmp_path)
    assert state["epoch"] == 4 and state["history"]["loss"] == pytest.approx([3.0, 1.9, 1.8, 1.7])
    assert sorted(p.name for p in tmp_path.glob("*.keras")) == ["epoch-0003.keras",
                                                                "epoch-0004.keras"]
    restored = keras.saving.load_model(state["path"])
    for a, b in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "epoch-0004.keras").unlink()
    with pytest.raises(ValueError, match="which is missing"):
        training.latest_checkpoint(tmp_path)


def test_transfer_weights_by_name_and_head_detection(tmp_path):
    src = create_model("dmrnet_8_tiny", classes=10)
    dst = create_model("dmrnet_8_tiny", classes=3)
    copied = training.transfer_weights(src, dst)
    assert "predictions" not in copied and "stage3_block1" in copied
    np.testing.assert_array_equal(dst.get_layer("stem_conv").get_weights()[0],
                                  src.get_layer("stem_conv").get_weights()[0])
    path = tmp_path / "w.weights.h5"
    src.save_weights(path)
    assert training.head_classes_in_weights_file(path) == 10
    with pytest.raises(ValueError, match="another architecture"):
        training.transfer_weights(create_model("dmrnet_14"), dst)


def test_freeze_backbone_keeps_head_trainable():
    model = create_model("dmrnet_8_tiny", classes=3)
    training.freeze_backbone(model)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"predictions"}


def test_strategy_errors(monkeypatch):
    with pytest.raises(ValueError, match="Unknown `strategy`: 'ps'"):
        check_strategy_name("ps")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="The TF_CONFIG environment variable is not set"):
        check_strategy_name("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        parse_tf_config()
    monkeypatch.setenv("TF_CONFIG",
                       '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}')
    with pytest.raises(ValueError, match="TF_CONFIG is malformed: task index 3 is outside"):
        parse_tf_config()


def test_warmup_rises_linearly_then_follows_the_paper_steps_and_round_trips():
    s = training.learning_rate_schedule("paper", 0.1, epochs=10, steps_per_epoch=10,
                                        warmup_epochs=2)
    assert isinstance(s, training.Warmup) and s.warmup_steps == 20
    assert _lr(s, 0) == pytest.approx(0.01)
    assert _lr(s, 10) == pytest.approx(0.01 + 0.09 * 10 / 20)
    assert _lr(s, 20) == pytest.approx(0.1) and _lr(s, 49) == pytest.approx(0.1)
    assert _lr(s, 51) == pytest.approx(0.01) and _lr(s, 99) == pytest.approx(0.0001)
    # A warm-up never reaches past the first decay (here at step 50).
    long = training.learning_rate_schedule("paper", 0.1, 10, 10, warmup_epochs=9)
    assert long.warmup_steps == 49 and _lr(long, 51) == pytest.approx(0.01)
    # It survives a .keras round trip inside the optimizer (what a resumed run reloads).
    opt = keras.optimizers.deserialize(keras.optimizers.serialize(training.make_optimizer(s)))
    restored = opt._learning_rate
    assert isinstance(restored, training.Warmup)
    assert [_lr(restored, i) for i in (0, 10, 30, 60)] == [_lr(s, i) for i in (0, 10, 30, 60)]
    assert training.learning_rate_schedule("paper", 0.1, 10, 10, warmup_epochs=0).__class__ \
        is keras.optimizers.schedules.PiecewiseConstantDecay
    with pytest.raises(ValueError, match="`warmup_epochs` must be a number >= 0"):
        training.learning_rate_schedule("paper", 0.1, 10, 10, warmup_epochs=-1)


def test_precise_batchnorm_sets_the_average_of_the_batch_statistics():
    inputs = keras.Input((3,))
    bn = keras.layers.BatchNormalization(momentum=0.9, name="bn")
    model = keras.Model(inputs, bn(inputs))
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=i, scale=1 + i, size=(16, 3)).astype("float32") for i in range(4)]
    used = training.precise_batchnorm(model, [(b, None) for b in batches])
    assert used == 4 and bn.momentum == 0.9  # restored
    np.testing.assert_allclose(np.asarray(bn.moving_mean),
                               np.mean([b.mean(0) for b in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance),
                               np.mean([b.var(0) for b in batches], 0), rtol=1e-4)
    # A frozen BatchNorm (fine-tuning) keeps its statistics.
    bn.trainable = False
    before = np.asarray(bn.moving_mean).copy()
    training.precise_batchnorm(model, [(b + 10, None) for b in batches])
    np.testing.assert_array_equal(np.asarray(bn.moving_mean), before)


def test_run_settings_restore_determinism_and_policy():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("op determinism is TensorFlow's")
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    policy = keras.config.dtype_policy().name
    with training.run_settings(seed=None, deterministic=not was, mixed_precision=True):
        assert tf_config.is_op_determinism_enabled() == (not was)
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert tf_config.is_op_determinism_enabled() == was
    assert keras.config.dtype_policy().name == policy

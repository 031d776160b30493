"""Fingerprints: weights that check the outputs of the network they are loaded into."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import zoo
from zoo import applications, cli, weights
from zoo.fingerprint import (
    check_fingerprint,
    compare,
    compute_fingerprint,
    model_outputs,
    reference_inputs,
)
from zoo.registry import build_published

ROOT = Path(__file__).resolve().parents[1]
KEY = "dmrnet_8_tiny.digits"
DRIFT = re.compile(
    r"^dmrnet_8_tiny\.digits: the model's outputs on the reference inputs differ from those "
    r"recorded when the weights were published \(largest difference (\S+) in logits, tolerance "
    r"(\S+); top-5 classes changed for (\d) of 4 images\)\. The architecture, padding or "
    r"preprocessing has drifted from the one the weights were trained with: ")


@pytest.fixture(autouse=True)
def package_manifest_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DMR_KERAS_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DMR_KERAS_MIRROR", raising=False)
    monkeypatch.delenv("DMR_KERAS_MANIFESTS", raising=False)


@pytest.fixture(scope="module")
def entry():
    return weights.load_manifest()[KEY]


def _drift(err):
    """``(difference, tolerance, images whose top-5 changed)`` from the drift message."""
    match = DRIFT.match(str(err.value))
    assert match, str(err.value)
    return float(match.group(1)), float(match.group(2)), int(match.group(3))


def test_reference_inputs_follow_the_documented_recipe(entry):
    x = reference_inputs(entry.input_shape, entry.preprocessing)
    u = np.random.default_rng(0).random((4, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(
        x, (u - np.float32(entry.preprocessing["mean"][0])) / np.float32(entry.preprocessing[
            "std"][0]))
    # what preprocess_input makes of the same images in [0, 255]
    np.testing.assert_allclose(x, applications.preprocess_input(u * 255.0, weights=KEY),
                               atol=1e-5)


def test_shipped_entry_passes_its_fingerprint(entry):
    fp = entry.fingerprint
    assert fp["output"] == "logits" and fp["top"] == 5 and fp["count"] == 4 and fp["seed"] == 0
    assert np.asarray(fp["indices"]).shape == np.asarray(fp["values"]).shape == (4, 5)
    model = build_published(entry)
    result = check_fingerprint(model, entry)
    assert result["ok"] and result["difference"] < result["tolerance"] / 100
    assert result["tolerance"] == pytest.approx(1e-4 * np.max(np.abs(fp["values"])), rel=1e-3)
    # the logits come from the head whatever its activation: softmax or None give one answer
    logits = applications.DMRNet8Tiny(weights="digits", classifier_activation=None,
                                      include_preprocessing=False)
    x = reference_inputs(entry.input_shape, entry.preprocessing)
    np.testing.assert_allclose(model_outputs(model, x)[0],
                               keras.ops.convert_to_numpy(logits(x, training=False)), atol=1e-4)
    # a model with its preprocessing inside is fed the pixels that give x: the same logits
    with_pre = applications.DMRNet8Tiny(weights="digits", classifier_activation=None)
    np.testing.assert_allclose(model_outputs(with_pre, x)[0], model_outputs(model, x)[0],
                               atol=1e-4)
    # recomputing gives the stored fingerprint (values rounded to 7 digits; the kernels that
    # compute it may differ from the ones that stored it by float32 rounding of the largest
    # logit, e.g. TensorFlow's fused BatchNorm against Keras' ops: 3.6e-6 at a scale of 28)
    again = compute_fingerprint(model, entry)
    assert again["indices"] == fp["indices"]
    np.testing.assert_allclose(again["values"], fp["values"],
                               atol=1e-6 * np.abs(fp["values"]).max())
    # and random weights are far outside it
    with pytest.raises(ValueError) as err:
        check_fingerprint(zoo.create_model("dmrnet_8_tiny"), entry)
    difference, tolerance, changed = _drift(err)
    assert difference > 1000 * tolerance and changed == 4


def test_one_kernel_moved_by_noise_of_1e_2_fails_with_a_clear_message(entry):
    """N(0, 1e-2) noise on one convolution's kernel (1,152 weights; measured 28-105x the
    tolerance over 3 seeds). A single weight moved by 1e-2 is caught or not depending on the
    weight (0-10x over 20 weights tried on the shipped digits entry), so it is not the test."""
    model = zoo.create_model(KEY)
    block = model.get_layer("stage2_block1")
    values = block.get_weights()
    noise = np.random.default_rng(0).normal(0.0, 1e-2, values[0].shape).astype("float32")
    block.set_weights([values[0] + noise] + values[1:])
    with pytest.raises(ValueError) as err:
        check_fingerprint(model, entry)
    difference, tolerance, _ = _drift(err)
    assert 3 * tolerance < difference < 1.0
    assert "dmr-zoo verify --deep" in str(err.value) and "dmr-zoo fetch" in str(err.value)


def test_batchnorm_epsilon_change_fails(entry):
    model = zoo.create_model(KEY)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.epsilon = 1e-3  # Keras' default instead of the reference's 2e-5
    with pytest.raises(ValueError) as err:
        check_fingerprint(model, entry)
    difference, tolerance, _ = _drift(err)
    assert difference > 3 * tolerance


def test_padding_drift_in_the_builder_stops_every_way_of_loading(entry, monkeypatch):
    """Stride-2 convolutions padded as Keras' "same" (bottom/right only) instead of k // 2 on
    every side: every weight still loads by name and shape, the outputs are wrong."""
    import dmr_keras.layers

    fetched = weights.resolve(entry)
    monkeypatch.setattr(dmr_keras.layers, "conv_padding",
                        lambda kernel_size, strides: (0, "valid" if kernel_size == 1 else "same"))
    for load in (lambda: zoo.create_model(KEY),
                 lambda: applications.DMRNet8Tiny(weights="digits"),
                 # fine-tuning: checked on the network built as published
                 lambda: zoo.create_model("dmrnet_8_tiny", weights="digits", classes=5),
                 lambda: applications.DMRNet8Tiny(weights="digits", include_top=False,
                                                  input_shape=(None, None, 3), pooling="avg")):
        with pytest.raises(ValueError) as err:
            load()
        difference, tolerance, _ = _drift(err)
        assert difference > 100 * tolerance
    # the way out for a deliberate change: the file by path is not checked
    model = zoo.create_model("dmrnet_8_tiny", weights=str(fetched))
    assert model.output_shape == (None, 10)


def test_tolerance_covers_batch_size_1_vs_4(entry):
    model = build_published(entry)
    x = reference_inputs(entry.input_shape, entry.preprocessing)
    one_by_one = np.concatenate([model_outputs(model, x[i:i + 1])[0] for i in range(4)])
    together = model_outputs(model, x)[0]
    tolerance = entry.fingerprint["tolerance"]
    assert np.max(np.abs(one_by_one - together)) < tolerance / 100
    stored = np.asarray(entry.fingerprint["values"])
    at_stored = np.take_along_axis(one_by_one, np.asarray(entry.fingerprint["indices"]), axis=1)
    assert np.max(np.abs(at_stored - stored)) < tolerance / 100


def test_checked_in_float32_under_a_mixed_precision_policy(entry):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = zoo.create_model(KEY)  # float16 outputs would be far outside the tolerance
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("stem_conv").compute_dtype == "float16"
    assert keras.config.dtype_policy().name == "float32"


def test_fingerprint_passes_on_jax():
    pytest.importorskip("jax")
    code = ("import keras, zoo\n"
            "assert keras.backend.backend() == 'jax'\n"
            "from zoo.fingerprint import compare\n"
            "from zoo.registry import build_published\n"
            "from zoo.weights import load_manifest\n"
            f"e = load_manifest()[{KEY!r}]\n"
            "r = compare(build_published(e), e.fingerprint, e)\n"
            "assert r['ok'], r\n"
            "print('difference', r['difference'], r['tolerance'])\n")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("DMR_KERAS_MANIFESTS", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    difference, tolerance = map(float, proc.stdout.split()[-2:])
    assert difference < tolerance / 100


def test_compare_passes_a_near_tie_at_the_last_place_and_fails_a_new_class(monkeypatch):
    from zoo import fingerprint

    class Entry:
        key = "dmrnet_8_tiny.x"
        input_shape = (32, 32, 3)
        preprocessing = {"mean": [0.5] * 3, "std": [0.25] * 3}

    recorded = np.array([[10.0, 5.0, 4.0, 3.0, 2.0, 1.9995, 0.0, -1.0]] * 4)
    now = {"values": recorded}
    monkeypatch.setattr(fingerprint, "model_outputs", lambda model, x: (now["values"], "logits"))
    fp = compute_fingerprint(None, Entry)
    assert fp["indices"][0] == [0, 1, 2, 3, 4] and fp["tolerance"] == pytest.approx(1e-3)
    # the 5th and 6th classes swap within the tolerance (float noise): passes
    now["values"] = recorded[:, [0, 1, 2, 3, 5, 4, 6, 7]]
    result = compare(None, fp, Entry)
    assert result["ok"] and result["changed"] == 4 and result["difference"] == pytest.approx(5e-4)
    # a class outside the recorded top-5 rises above the 5th by 0.5: fails
    now["values"] = recorded.copy()
    now["values"][1, 6] = 2.5
    result = compare(None, fp, Entry)
    assert not result["ok"] and result["changed"] == 1
    assert result["difference"] == pytest.approx(0.5)
    # a recorded value moves by 2 tolerances: fails
    now["values"] = recorded.copy()
    now["values"][3, 0] += 2e-3
    result = compare(None, fp, Entry)
    assert not result["ok"] and result["changed"] == 0


def _finished_run(run: Path, model: keras.Model, mean=0.4, std=0.3):
    """A minimal finished dmr-train run directory: weights, model.keras and metrics.json."""
    run.mkdir(parents=True, exist_ok=True)
    model.save_weights(run / "model.weights.h5")
    model.save(run / "model.keras")
    (run / "metrics.json").write_text(json.dumps({
        "model": "dmrnet_8_tiny", "dataset": "digits", "epochs": 3, "resumed_from_epoch": 0,
        "test_accuracy": 0.5, "test_loss": 1.5, "wall_time_s": 12.5, "backend": "tensorflow",
        "command": "dmr-train --model dmrnet_8_tiny --dataset digits --epochs 3",
        "data": {"num_classes": 10, "image_shape": [32, 32, 3], "mean": [mean] * 3,
                 "std": [std] * 3, "class_names": [str(i) for i in range(10)]},
    }))
    return run


def test_publish_records_fingerprint_and_provenance_that_verify(tmp_path, monkeypatch):
    run = _finished_run(tmp_path / "run", zoo.create_model(KEY))
    manifest, dest = tmp_path / "m.json", tmp_path / "w"
    with pytest.raises(ValueError, match="64 hex digits"):
        cli.publish(run, "mine", manifest=manifest, dest=dest, data_sha256="abc")
    assert not manifest.exists()
    data_sha = "AB" * 32
    entry = cli.publish(run, "mine", manifest=manifest, dest=dest, data_sha256=data_sha)
    fp, prov = entry.fingerprint, entry.provenance
    assert fp["output"] == "logits" and len(fp["indices"]) == 4
    # not the shipped fingerprint: the run's own preprocessing made other reference inputs
    assert fp["values"] != weights.load_manifest()[KEY].fingerprint["values"]
    assert prov["wall_time_s"] == 12.5 and prov["epochs"] == 3 and prov["backend"] == "tensorflow"
    assert prov["data_sha256"] == data_sha.lower() and prov["versions_from"] == "publish"
    assert set(prov["versions"]) == {"dmr-keras", "keras", "tensorflow", "numpy", "python"}
    assert prov["versions"]["keras"] == keras.__version__
    assert entry.command.startswith("dmr-train")
    assert weights.load_manifest(manifest)["dmrnet_8_tiny.mine"] == entry

    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(manifest))
    monkeypatch.setenv("DMR_KERAS_MIRROR", str(dest))
    model = zoo.create_model("dmrnet_8_tiny.mine")  # the fingerprint is checked on loading
    assert zoo.model_info("dmrnet_8_tiny")["weights"]["mine"]["provenance"] == prov
    check_fingerprint(model, entry)


def test_publish_refuses_a_builder_that_drifted_since_the_run(tmp_path):
    trained = zoo.create_model(KEY)
    trained.get_layer("stem_bn").epsilon = 0.1  # saved in model.keras, not in the builder
    run = _finished_run(tmp_path / "run", trained)
    with pytest.raises(ValueError, match="does not compute what .*model.keras"):
        cli.publish(run, "mine", manifest=tmp_path / "m.json", dest=tmp_path / "w")
    assert not (tmp_path / "m.json").exists()


def test_cli_publish_takes_data_sha256(tmp_path, capsys):
    run = _finished_run(tmp_path / "run", zoo.create_model(KEY))
    (run / "model.keras").unlink()  # optional: the cross-check is skipped
    manifest = tmp_path / "m.json"
    assert cli.main(["publish", str(run), "--tag", "cli", "--manifest", str(manifest),
                     "--dest", str(tmp_path / "w"), "--data-sha256", "0" * 64]) == 0
    assert "published dmrnet_8_tiny.cli" in capsys.readouterr().out
    record = json.loads(manifest.read_text())["weights"]["dmrnet_8_tiny.cli"]
    assert record["provenance"]["data_sha256"] == "0" * 64 and record["fingerprint"]["values"]
    assert record["provenance"]["train_time_from"] == "run"


def test_publish_takes_the_training_time_of_a_partly_timed_run(tmp_path):
    # A run resumed from checkpoints of a dmr-train that did not time epochs: the sum from
    # its log is given, and the entry says so.
    run = _finished_run(tmp_path / "run", zoo.create_model(KEY))
    (run / "model.keras").unlink()
    manifest, dest = tmp_path / "m.json", tmp_path / "w"
    with pytest.raises(ValueError, match="positive number of seconds"):
        cli.publish(run, "t", manifest=manifest, dest=dest, train_time_s=-1.0)
    assert cli.main(["publish", str(run), "--tag", "t", "--manifest", str(manifest),
                     "--dest", str(dest), "--train-time-s", "12012.4"]) == 0
    prov = json.loads(manifest.read_text())["weights"]["dmrnet_8_tiny.t"]["provenance"]
    assert (prov["train_time_s"], prov["epochs_timed"], prov["train_time_from"]) == \
        (12012.4, 3, "given")


def _lines(out, kind):
    """``{key: (status, detail)}`` from the lines of ``dmr-zoo verify`` naming ``kind``."""
    rows = {}
    for line in out.splitlines():
        parts = re.split(r"\s{2,}", line.strip(), maxsplit=3)
        if len(parts) == 4 and parts[2] == kind:
            rows[parts[1]] = (parts[0], parts[3])
    return rows


def test_verify_deep_ok_on_the_package_and_bad_on_an_edited_fingerprint(tmp_path, monkeypatch,
                                                                      capsys):
    assert cli.main(["verify"]) == 0
    plain = capsys.readouterr().out
    assert "fingerprint" not in plain  # the plain output is as before
    assert cli.main(["verify", "--deep"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(plain)
    status, detail = _lines(out, "fingerprint")[KEY]
    assert status == "OK" and detail.startswith("largest difference")
    n = len(weights.load_manifest())  # every shipped entry has a fingerprint, all OK
    assert out.splitlines()[-1] == f"{n} fingerprint(s): {n} OK, 0 BAD, 0 SKIP"

    record = weights.load_manifest()[KEY].to_json()
    edited = json.loads(json.dumps(record))
    edited["fingerprint"]["values"][2][0] += 0.5
    bare = {k: v for k, v in record.items() if k != "fingerprint"}
    (tmp_path / "m.json").write_text(json.dumps({"format": 1, "weights": {
        KEY: edited, "dmrnet_8_tiny.bare": {**bare, "tag": "bare"}}}))
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(tmp_path / "m.json"))
    assert cli.main(["verify"]) == 0  # the file itself is fine
    capsys.readouterr()
    assert cli.main(["verify", "--deep"]) == 1
    rows = _lines(capsys.readouterr().out, "fingerprint")
    assert rows[KEY][0] == "BAD" and "largest difference 0.5 in logits" in rows[KEY][1]
    assert rows["dmrnet_8_tiny.bare"] == ("SKIP", "no fingerprint in the manifest")
    with pytest.raises(ValueError) as err:  # and loading it by tag refuses
        zoo.create_model(KEY)
    assert _drift(err)[0] == pytest.approx(0.5, abs=1e-3)

"""The bench scripts run on a tiny setting and print their tables (the figures are not tested:
benchmarks compare ratios measured side by side, never absolute timings in unit tests)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402


def _run(script, *args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, str(BENCH / script), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _table_rows(text, first_cell):
    return [line for line in text.splitlines() if line.startswith(f"| {first_cell}")]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- pure helpers ------------------------------------------------------------------------------


def test_thread_counts_and_errors():
    assert common.thread_counts("default", 4) == (0, 0)
    assert common.thread_counts("intra", 4) == (4, 1)
    assert common.thread_counts("inter", 4) == (1, 4)
    with pytest.raises(ValueError, match="'both'. Valid values: 'default', 'intra', 'inter'"):
        common.thread_counts("both")


def test_markdown_table_aligns_and_formats():
    text = common.table(["a", "b"], [["x", 1234.5], ["yy", 0.123]])
    lines = text.splitlines()
    assert lines[0] == "| a  |     b |"
    assert lines[1] == "|----|------:|"
    assert lines[2] == "| x  | 1,234 |" or lines[2] == "| x  | 1,235 |"
    assert lines[3] == "| yy |  0.12 |"


def test_union_length_of_overlapping_intervals():
    profile = _load("profile")
    assert profile._union_length([(0, 10), (5, 15), (20, 30)]) == 25
    assert profile._union_length([(0, 10), (2, 3)]) == 10
    assert profile._union_length([]) == 0


def test_ratio_is_median_of_per_repeat_ratios():
    throughput = _load("throughput")
    samples = [
        {"model": "a", "batch": 2, "mode": "training", "repeat": r, "images_per_s": a}
        for r, a in enumerate([10.0, 30.0, 20.0])
    ] + [
        {"model": "ref", "batch": 2, "mode": "training", "repeat": r, "images_per_s": b}
        for r, b in enumerate([10.0, 10.0, 40.0])
    ]
    med, lo, hi = throughput._ratio_to(samples, "a", "ref", 2, "training")
    assert (med, lo, hi) == (1.0, 0.5, 3.0)
    assert throughput._ratio_to(samples, "a", "ref", 4, "training") is None


def test_claims_digits_subset_is_fixed_balanced_and_disjoint():
    claims = _load("claims")
    x_tr, y_tr, x_te, y_te = claims.digits_native(5, data_seed=0)
    assert x_tr.shape == (50, 8, 8, 3) and x_te.shape == (1797 - 50, 8, 8, 3)
    assert sorted(set(y_tr.tolist())) == list(range(10))
    assert all((y_tr == c).sum() == 5 for c in range(10))
    again = claims.digits_native(5, data_seed=0)
    assert (again[0] == x_tr).all()
    other = claims.digits_native(5, data_seed=1)
    assert not (other[0] == x_tr).all()
    with pytest.raises(ValueError, match="--train-per-class 9999 exceeds"):
        claims.digits_native(9999, data_seed=0)


# ---- the scripts, end to end on tiny settings -----------------------------------------------


def test_throughput_tables_json_and_plot_for_one_setting(tmp_path):
    """The default run's share of the bench: one backend, one thread setting (the full matrix,
    two backends and two thread settings, is the slow test below)."""
    out = tmp_path / "t.json"
    proc = _run("throughput.py", "--models", "dmrnet_8_tiny,dmrnet_14", "--reference",
                "dmrnet_14", "--batches", "2", "--size", "8", "--repeats", "2",
                "--min-time", "0", "--threads", "inter", "--backends", "tensorflow",
                "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "### tensorflow, threads=inter" in text and "### jax" not in text
    assert len(_table_rows(text, "dmrnet_8_tiny ")) == 2  # inference and training
    assert all("|        1.00 |" in r for r in _table_rows(text, "dmrnet_14 "))
    summary = _table_rows(text, "tensorflow ")
    assert len(summary) == 2 and all("inter / inter" in r for r in summary)
    data = json.loads(out.read_text())
    assert [r["backend"] for r in data["runs"]] == ["tensorflow"]
    assert all(s["images_per_s"] > 0 for r in data["runs"] for s in r["samples"])
    again = _run("throughput.py", "--from-json", str(out), "--plot", str(tmp_path / "t.png"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert _table_rows(again.stdout, "dmrnet_8_tiny ") == _table_rows(text, "dmrnet_8_tiny ")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_throughput_prints_tables_for_each_backend(tmp_path):
    out = tmp_path / "t.json"
    proc = _run("throughput.py", "--models", "dmrnet_8_tiny,dmrnet_14", "--reference",
                "dmrnet_14", "--batches", "2", "--size", "8", "--repeats", "2",
                "--min-time", "0", "--threads", "inter,single", "--backends",
                "tensorflow,jax", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for header in ("### tensorflow, threads=inter", "### tensorflow, threads=single", "### jax",
                   "### dmrnet_8_tiny / dmrnet_14 images/s", "bound (2 x one-core / best)"):
        assert header.replace("(2 ", f"({os.cpu_count()} ") in text, text
    # 3 runs x 1 batch x 2 modes rows per model; the reference's ratio to itself is 1.00
    assert len(_table_rows(text, "dmrnet_8_tiny ")) == 6
    ref_rows = _table_rows(text, "dmrnet_14 ")
    assert len(ref_rows) == 6 and all("|        1.00 |" in r for r in ref_rows)
    summary = _table_rows(text, "tensorflow ")  # backend, batch, mode, 2 settings, best, which,
    assert len(summary) == 2 and all(len(r.split("|")) == 10 for r in summary)  # bound
    assert "peak RSS MiB" in text
    data = json.loads(out.read_text())
    assert {r["backend"] for r in data["runs"]} == {"tensorflow", "jax"}
    assert all(s["images_per_s"] > 0 for r in data["runs"] for s in r["samples"])
    assert all(m["training"] >= m["inference"] > 0 for m in data["memory"])
    flops = data["runs"][0]["models"]
    assert flops["dmrnet_14"]["flops"] > flops["dmrnet_8_tiny"]["flops"] > 0

    # the tables and a plot, from the saved data
    again = _run("throughput.py", "--from-json", str(out), "--plot", str(tmp_path / "t.png"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert _table_rows(again.stdout, "dmrnet_8_tiny ") == _table_rows(text, "dmrnet_8_tiny ")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_throughput_rejects_bad_arguments():
    proc = _run("throughput.py", "--models", "dmrnet_56x", "--backends", "tensorflow")
    assert proc.returncode != 0 and "dmrnet_56x" in proc.stderr
    proc = _run("throughput.py", "--modes", "serving")
    assert proc.returncode == 2 and "unknown mode(s) ['serving']" in proc.stderr


def test_profile_prints_op_breakdown():
    proc = _run("profile.py", "--models", "dmrnet_8_tiny", "--threads", "inter", "--batch",
                "4", "--size", "8", "--steps", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _table_rows(proc.stdout, "dmrnet_8_tiny ")
    assert len(rows) == 1 and "| inter " in rows[0]
    assert "conv weight grad" in proc.stdout
    assert "Conv2DBackpropFilter" in proc.stdout  # a real op type read from the trace


def test_claims_runs_resumes_and_plots(tmp_path):
    args = ["--models", "dmrnet_8_tiny,dmrnet_14", "--reference", "dmrnet_14", "--seeds",
            "0,1", "--epochs", "1", "--train-per-class", "3", "--output", str(tmp_path)]
    proc = _run("claims.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _table_rows(proc.stdout, "dmrnet_8_tiny ")
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert len(rows) == 1 and cells[3] == "2"  # seeds
    assert "train 30 / test 1767 images" in proc.stdout
    state = json.loads((tmp_path / "claims.json").read_text())
    assert len(state["results"]) == 4
    assert all(0 <= r["test_accuracy"] <= 1 for r in state["results"])
    assert (tmp_path / "claims.png").read_bytes()[:4] == b"\x89PNG"

    # everything done: nothing retrains, same table; --plot-params adds claim 3's plot
    again = _run("claims.py", *args, "--plot-params")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "seed 0: test accuracy" not in again.stderr
    assert _table_rows(again.stdout, "dmrnet_8_tiny ") == rows
    assert (tmp_path / "error_vs_params.png").read_bytes()[:4] == b"\x89PNG"

    other = _run("claims.py", *args[:-2], "--epochs", "2", "--output", str(tmp_path))
    assert other.returncode == 2 and "another setting" in other.stderr


def _synthetic_run(threads, rates):
    samples = [{"model": m, "batch": 8, "mode": "training", "repeat": r, "images_per_s": v}
               for m, v in rates.items() for r in range(3)]
    return {"backend": "tensorflow", "threads": threads, "dtype_policy": "float32",
            "matmul_gflops": 100.0, "samples": samples,
            "models": {m: {"flops": 10**9, "params": 1} for m in rates}}


def test_report_ratios_and_the_multi_core_bound():
    import argparse

    throughput = _load("throughput")
    args = argparse.Namespace(models=["dmr", "ref"], reference="ref", batches=[8],
                              modes=["training"], threads=["default", "inter", "single"],
                              size=8, dtype_policy=None, repeats=3, min_time=0.0,
                              peak_tflops=None)
    runs = [_synthetic_run("default", {"dmr": 90.0, "ref": 100.0}),
            _synthetic_run("inter", {"dmr": 120.0, "ref": 60.0}),
            _synthetic_run("single", {"dmr": 55.0, "ref": 50.0})]
    mach = {"cpu": "test", "cores": 2, "python": "3"}
    text = throughput.report(args, runs, {}, mach)
    row = [c.strip() for c in _table_rows(text, "tensorflow ")[0].split("|")[1:-1]]
    # default 0.9, inter 2.0, single 1.1; best: dmr under inter (120) / ref under default (100);
    # bound: 2 cores x ref's one-core 50 / ref's best 100 = 1.0
    assert row[3:] == ["0.90", "2.00", "1.10", "1.20", "inter / default", "1.00"]
    # 3 GFLOP per training image at 120 img/s = 360 GFLOP/s = 360 % of the 100 GFLOP/s matmul
    inter_rows = text.split("threads=inter")[1]
    cells = [c.strip() for c in _table_rows(inter_rows, "dmr ")[0].split("|")[1:-1]]
    assert cells[6:] == ["2.00", "3,000", "360", "360"]

    only_single = throughput.report(args, runs[2:], {}, mach)  # no contender: no crash
    assert "single / single" in only_single


def test_input_pipeline_prints_pipeline_and_training_rates(tmp_path):
    out = tmp_path / "p.json"
    proc = _run("input_pipeline.py", "--dataset", "digits", "--models", "dmrnet_8_tiny",
                "--batch-size", "32", "--pipeline-batches", "10", "--steps", "2",
                "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    pipe, (run,) = data["pipeline"], data["training"]
    assert pipe["dataset"] == "digits" and pipe["batches"] == 10 and pipe["images_per_s"] > 0
    assert run["model"] == "dmrnet_8_tiny" and run["images_per_s"] > 0
    (row,) = _table_rows(proc.stdout, "dmrnet_8_tiny ")
    ratio = pipe["images_per_s"] / run["images_per_s"]
    assert row.split("|")[3].strip() == f"{ratio:.1f}x"


def test_cli_startup_times_before_and_after(tmp_path):
    out = _run("cli_startup.py", "--repeats", "1", "--limit", "2", "--json",
               str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| dmr-")]
    assert [r.split("|")[1].strip() for r in rows] == ["dmr-train --help", "dmr-train --epochs x"]
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["exit_status"] for r in results] == [0, 2]  # --help, then an argument error
    assert all(len(r["before_s"]) == len(r["after_s"]) == 1 for r in results)
    assert results[0]["stderr_lines_after"] == 0  # no TensorFlow notice on --help


def test_fused_batchnorm_bench_prints_both_paths(tmp_path):
    out = tmp_path / "f.json"
    proc = _run("fused_batchnorm.py", "--models", "dmrnet_8_tiny", "--batches", "4", "--size",
                "8", "--repeats", "2", "--steps", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _table_rows(proc.stdout, "dmrnet_8_tiny ")
    assert len(rows) == 2 and "training" in rows[0] and "inference" in rows[1]
    data = json.loads(out.read_text())
    assert data["machine"]["onednn"] is True  # the script turns oneDNN on before TensorFlow
    for row in data["rows"]:
        assert len(row["ratios"]) == 2 and row["keras"] > 0 and row["fused"] > 0
        # The ratio is the median of the per-repeat ratios (runs are rounded to 0.1 image/s).
        per_repeat = [f / k for f, k in zip(row["fused_runs"], row["keras_runs"])]
        assert row["ratio"] == pytest.approx(sum(per_repeat) / 2, rel=0.02)
    bad = _run("fused_batchnorm.py", "--repeats", "0")
    assert bad.returncode == 2 and "at least 1" in bad.stderr


def test_claims_error_against_parameters_has_a_line_per_mapping():
    import argparse

    claims = _load("claims")
    args = argparse.Namespace(models=["resnet_38", "dmrnet_20", "resnet_26", "dmrnet_14",
                                      "dmrnet_14_k3", "dilnet_20"])
    results = [{"model": m, "seed": s, "params": p, "test_accuracy": a}
               for m, p, accs in (("dmrnet_20", 543_834, (0.90, 0.92)),
                                  ("dmrnet_14", 349_402, (0.88, 0.88)),
                                  ("resnet_38", 564_122, (0.89, 0.91)),
                                  ("resnet_26", 369_690, (0.87,)),
                                  ("dmrnet_14_k3", 523_546, (0.85,)),
                                  ("dilnet_20", 541_082, (0.86,)))
               for s, a in enumerate(accs)]
    lines = claims.param_lines(args, results)
    assert sorted(lines) == ["DILNet", "DMRNet", "DMRNet K=3", "ResNet"]
    assert [n for *_, n in lines["DMRNet"]] == ["dmrnet_14", "dmrnet_20"]  # by size
    assert [n for *_, n in lines["ResNet"]] == ["resnet_26", "resnet_38"]
    params, mean, std, _ = lines["DMRNet"][1]
    assert params == pytest.approx(0.543834) and mean == pytest.approx(9.0)
    assert std == pytest.approx(2 ** 0.5)  # errors 10 and 8: sample std
    assert lines["ResNet"][0][1:3] == (pytest.approx(13.0), 0)


def test_claims_separable_is_a_paired_t_test():
    claims = _load("claims")
    # mean 1.0, std 0.1, n 3: t = 17.3 > 4.303
    assert claims.separable([1.0, 1.1, 0.9]) == "yes (t=17.3)"
    # mean 0.167, std 1.04: t = 0.28
    assert claims.separable([1.0, -1.0, 0.5]) == "no (t=0.3)"
    # n 3 and t = 4.0 < 4.303: not separable at 95 % though every seed agrees
    assert claims.separable([1.0, 1.0 + 0.25 * 3 ** 0.5, 1.0 - 0.25 * 3 ** 0.5]).startswith("no")
    assert claims.separable([0.5]) == "n/a"


def _cifar_fixture(root, train_per_class=6, test_per_class=2):
    """A CIFAR-10 layout (``train/<class>/``, ``test/<class>/``) of random 32x32 PNGs."""
    import numpy as np
    import tensorflow as tf

    from dmr_keras import data

    rng = np.random.default_rng(0)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for name in data.CIFAR10_CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                (root / split / name / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())


def test_claims_run_killed_mid_way_resumes_to_the_uninterrupted_result(tmp_path):
    """A CIFAR study's run is SIGKILLed after an epoch is saved; started again, it continues
    from that epoch (not from 0) and its result equals an uninterrupted run's; the run's
    checkpoints are removed once its result is saved."""
    from conftest import sigkill_when

    _cifar_fixture(tmp_path / "c10")
    epochs = 4

    def args(name):
        return ["--dataset", "cifar10", "--data-dir",
                str(tmp_path / "c10"), "--models", "dmrnet_8_tiny", "--reference",
                "dmrnet_8_tiny", "--seeds", "0", "--epochs", str(epochs), "--batch-size", "10",
                "--output", str(tmp_path / name), "--work-dir", str(tmp_path / f"{name}-work")]

    whole = _run("claims.py", *args("whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected = json.loads((tmp_path / "whole" / "claims.json").read_text())["results"][0]
    assert "resumed_at_epoch" not in expected

    state = tmp_path / "killed-work" / "dmrnet_8_tiny-seed0" / "checkpoint.json"

    def saved_epoch():
        try:
            epoch = json.loads(state.read_text())["epoch"]
        except (OSError, ValueError):
            return None
        return epoch if epoch < epochs else None

    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    killed_at, rc = sigkill_when([sys.executable, str(BENCH / "claims.py"), *args("killed")], env,
                                 tmp_path / "killed.log", saved_epoch)
    assert killed_at and rc == -9, (killed_at, rc, (tmp_path / "killed.log").read_text()[-2000:])
    assert not (tmp_path / "killed" / "claims.json").exists()

    again = _run("claims.py", *args("killed"))
    assert again.returncode == 0, again.stderr[-3000:]
    got = json.loads((tmp_path / "killed" / "claims.json").read_text())["results"][0]
    assert got["resumed_at_epoch"] >= killed_at >= 1
    assert f"resuming after epoch {got['resumed_at_epoch']}" in again.stderr
    assert got["test_loss"] == pytest.approx(expected["test_loss"], abs=1e-5)
    assert got["test_accuracy"] == expected["test_accuracy"]
    assert got["train_accuracy"] == expected["train_accuracy"]
    assert not (tmp_path / "killed-work" / "dmrnet_8_tiny-seed0").exists()


def test_claims_on_a_cifar_folder_with_a_fixed_training_subset(tmp_path):
    """A CIFAR-10 layout of 60 + 20 images: --train-subset 30 trains every model and seed on the
    same 3 images per class; the test split stays whole."""
    _cifar_fixture(tmp_path / "c10")
    out = tmp_path / "out"
    args = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "c10"), "--models",
            "dmrnet_8_tiny", "--reference", "dmrnet_8_tiny", "--seeds", "0,1", "--epochs", "1",
            "--batch-size", "10", "--train-subset", "30", "--keep-models",
            str(tmp_path / "kept"), "--output", str(out)]
    proc = _run("claims.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train 30 / test 20 images" in proc.stdout
    state = json.loads((out / "claims.json").read_text())
    assert state["setting"]["train_subset"] == 30
    assert [r["train_examples"] for r in state["results"]] == [30, 30]
    # --keep-models: each run's final model, which measures what claims.json says
    import keras

    from dmr_keras import data

    _, test, _ = data.load("cifar10", batch_size=10, data_dir=str(tmp_path / "c10"))
    for r in state["results"]:
        kept = keras.saving.load_model(tmp_path / "kept" / f"dmrnet_8_tiny-seed{r['seed']}.keras")
        loss, acc = kept.evaluate(test, verbose=0)
        assert (loss, acc) == pytest.approx((r["test_loss"], r["test_accuracy"]), rel=1e-5)
    too_many = _run("claims.py", *args[:-2], "--train-subset", "60", "--output",
                    str(tmp_path / "o2"))
    assert too_many.returncode != 0 and "--train-subset 60 is not smaller than the 60" in \
        too_many.stderr
    digits = _run("claims.py", "--train-subset", "30", "--output", str(tmp_path / "o3"))
    assert digits.returncode == 2 and "digits: --train-per-class" in digits.stderr


def test_bn_stats_measures_each_variant_on_images_the_model_never_saw(tmp_path):
    """bench/bn_stats.py against the same steps done here in-process: the moving-statistics row
    is the saved model on the held-out part, ``precise`` is precise BN over the kept part's first
    unaugmented batches, ``precise_aug`` over the same batches augmented (same labels, other
    pixels); the held-out images are none of the kept ones; a second run measures nothing
    again; another setting in the same output is refused."""
    import keras
    import numpy as np

    import zoo
    from dmr_keras import data, training

    _cifar_fixture(tmp_path / "c10")
    c10 = str(tmp_path / "c10")
    net = zoo.create_model("dmrnet_8_tiny", classes=10, input_shape=(32, 32, 3))
    path = tmp_path / "m.keras"
    net.save(path)
    out = tmp_path / "out"
    args = ["--dataset", "cifar10", "--data-dir", c10, "--holdout-fraction", "0.5",
            "--eval-images", "20", "--batches", "2", "--batch-size", "10",
            "--output", str(out), str(path)]
    proc = _run("bn_stats.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = json.loads((out / "bn_stats.json").read_text())["results"]
    assert "| m " in proc.stdout and r["eval_images"] == 20

    kept, held, _ = data.load("cifar10", batch_size=10, data_dir=c10, augment=False, epochs=1,
                              holdout_fraction=0.5)
    x = np.concatenate([b[0].numpy() for b in held])
    y = np.concatenate([b[1].numpy() for b in held])
    seen = np.concatenate([b[0].numpy() for b in kept])
    assert len(y) == 30 and len(seen) == 30
    assert not any(np.array_equal(a, b) for a in x for b in seen)

    def expected(batches):
        keras.backend.clear_session()
        model = keras.saving.load_model(path)
        if batches is not None:
            assert training.precise_batchnorm(model, batches, max_batches=2) == 2
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        return model.evaluate(x, y, verbose=0)

    # 20 of the 30 held-out images, class-balanced: the script's subset
    _, pick = data.holdout_split(y, 20 / 30)
    x, y = x[pick], y[pick]
    plain, _, _ = data.load("cifar10", batch_size=10, data_dir=c10, augment=False, epochs=1,
                            holdout_fraction=0.5)
    aug, _, _ = data.load("cifar10", batch_size=10, data_dir=c10, augment=True, epochs=1,
                          holdout_fraction=0.5)
    for (xp, yp), (xa, ya) in zip(list(plain.take(2)), list(aug.take(2))):
        np.testing.assert_array_equal(yp.numpy(), ya.numpy())
        assert not np.allclose(xp.numpy(), xa.numpy())
    for variant, batches in (("moving", None), ("precise", plain), ("precise_aug", aug)):
        loss, acc = expected(batches)
        assert r[variant]["loss"] == pytest.approx(loss, rel=1e-5), variant
        assert r[variant]["accuracy"] == pytest.approx(acc, abs=1e-6), variant
    assert r["precise"]["loss"] != pytest.approx(r["moving"]["loss"], rel=1e-4)
    assert r["precise_aug"]["loss"] != pytest.approx(r["precise"]["loss"], rel=1e-4)

    again = _run("bn_stats.py", *args)
    assert again.returncode == 0 and "held-out" not in again.stderr
    assert json.loads((out / "bn_stats.json").read_text())["results"] == [r]
    other = _run("bn_stats.py", *args[:4], "--holdout-fraction", "0.4", *args[6:])
    assert other.returncode != 0 and "use another --output" in other.stderr
    missing = _run("bn_stats.py", *args[:-1], str(tmp_path / "nope.keras"))
    assert missing.returncode == 2 and "nope.keras' does not exist" in missing.stderr

"""`dmr-tune`: a keras-tuner search over DMRNet architectures and training settings, resumable.

    dmr-tune --tuner random --dataset digits --max-trials 10 --epochs 3 --max-params 200000 \
             --max-macs 30000000 --val-fraction 0.1

The command line only: its parser imports neither Keras nor keras-tuner, so ``dmr-tune --help``
answers at once; the search is :func:`tuning.search.tune`, whose docstring says what it does.
"""

from __future__ import annotations

import argparse

TUNERS = ("random", "bayesian", "hyperband")
STRATEGIES = ("none", "auto", "mirrored")
DEFAULT_SPACE = dict(depths_n=(1, 2, 3), widths=(0.5, 1), branches=(1, 2, 3),
                     mappings=("merge_and_run",), lrs=(0.1, 0.05), weight_decays=(1e-4, 5e-4),
                     batch_sizes=(64, 128))


def build_parser() -> argparse.ArgumentParser:
    from dmr_keras.performance import ONEDNN

    p = argparse.ArgumentParser(prog="dmr-tune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s = DEFAULT_SPACE
    p.add_argument("--tuner", default="random", choices=TUNERS)
    p.add_argument("--dataset", default="digits",
                   help="cifar10 | cifar100 | svhn | imagenet2012 | digits | folder:PATH")
    p.add_argument("--max-trials", type=int, default=3, help="trials to run (not counting "
                   "skipped configurations)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per trial (hyperband: max)")
    p.add_argument("--strategy", default="none", choices=STRATEGIES,
                   help="tf.distribute strategy every trial runs under")
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="split the CPU into N logical devices (for --strategy mirrored on CPU)")
    p.add_argument("--directory", default="tuning_runs")
    p.add_argument("--project", default="dmr")
    p.add_argument("--max-params", type=int, default=None,
                   help="skip configurations with more trainable parameters (never built)")
    p.add_argument("--max-macs", type=int, default=None,
                   help="skip configurations with more multiply-accumulates per image "
                   "(never built)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of each class of the training split held out (fixed) to "
                   "score trials; the test split scores the best model only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="start again instead of continuing DIRECTORY/PROJECT")
    p.add_argument("--depths-n", type=int, nargs="+", default=list(s["depths_n"]),
                   help="blocks per stage n (depth 6n+2)")
    p.add_argument("--widths", type=float, nargs="+", default=list(s["widths"]))
    p.add_argument("--branches", type=int, nargs="+", default=list(s["branches"]))
    p.add_argument("--mappings", nargs="+", default=list(s["mappings"]),
                   help="merge_and_run identity resnet")
    p.add_argument("--lrs", type=float, nargs="+", default=list(s["lrs"]))
    p.add_argument("--weight-decays", type=float, nargs="+", default=list(s["weight_decays"]))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(s["batch_sizes"]))
    p.add_argument("--max-train-examples", type=int, default=None,
                   help="cap on training images per epoch (quick searches)")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (ImageNet: manual files)")
    p.add_argument("--validation-split", type=float, default=0.1,
                   help="folder datasets without train/test folders: fraction of each class "
                   "held out as their test split")
    p.add_argument("--verbose", type=int, default=1,
                   help="0 silent, 1 bar, 2 lines, 3 lines and TensorFlow's own start-up logs")
    p.add_argument("--onednn", default="auto", choices=ONEDNN,
                   help="TensorFlow's oneDNN CPU kernels (auto: on, unless TF_ENABLE_ONEDNN_OPTS "
                        "is set)")
    return p


def main(argv=None) -> int:
    kwargs = vars(build_parser().parse_args(argv))
    from dmr_keras.startup import run_command, start_backend

    status = run_command("dmr-tune", start_backend, verbose=kwargs["verbose"] >= 3,
                         onednn=kwargs.pop("onednn"))
    if status:
        return status
    from tuning.search import tune

    return run_command("dmr-tune", tune, kwargs.pop("dataset"), **kwargs)


if __name__ == "__main__":
    raise SystemExit(main())

"""How long the command lines take to answer, as whole processes: before and after deferring
Keras, interleaved in one run, median of ``--repeats``.

    python bench/cli_startup.py [--repeats 3] [--json results.json]

"after" is the console script as installed (``dmr_cli.py``: the package imported with its
layers deferred; Keras and TensorFlow only once there is work). "before" is the same
``main()`` reached the way the console scripts did until now: ``import zoo.cli`` (or
``zoo.train``, ...) in a fresh interpreter, which imports ``dmr_keras`` and with it Keras and
TensorFlow first. Both run the same argument parser and print the same text; the table also
counts the lines each wrote to stderr (TensorFlow's start-up notices in "before").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, table  # noqa: E402

COMMANDS = [  # (program, launcher function, module with main(), argv)
    ("dmr-train", "train", "zoo.train", ["--help"]),
    ("dmr-train", "train", "zoo.train", ["--epochs", "x"]),
    ("dmr-zoo", "zoo_cli", "zoo.cli", ["list"]),
    ("dmr-zoo", "zoo_cli", "zoo.cli", ["info", "dmrnet_56"]),
    ("dmr-eval", "evaluate", "zoo.evaluate", ["--help"]),
    ("dmr-demo", "demo", "zoo.demo", ["--help"]),
    ("dmr-tune", "tune", "tuning.cli", ["--help"]),
]


def _code(kind, fn, module, argv):
    call = f"dmr_cli.{fn}()" if kind == "after" else f"__import__('{module}', fromlist=['x'])" \
        ".main()"
    head = "import dmr_cli" if kind == "after" else "import zoo, dmr_keras"
    return (f"import sys\n{head}\nsys.argv = ['prog', *{argv!r}]\n"
            f"try:\n    rc = {call}\nexcept SystemExit as e:\n    rc = e.code\n"
            "sys.exit(rc or 0)\n")


def time_once(kind, fn, module, argv):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _code(kind, fn, module, argv)],
                         capture_output=True, text=True, env=env, timeout=300)
    return time.perf_counter() - start, out.returncode, len(out.stderr.splitlines())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--limit", type=int, default=None, help="only the first N commands")
    args = p.parse_args(argv)
    rows, results = [], []
    for prog, fn, module, cmd_argv in COMMANDS[:args.limit]:
        times = {"before": [], "after": []}
        info = {}
        for _ in range(args.repeats):  # interleaved: before, after, before, after, ...
            for kind in ("before", "after"):
                dt, rc, err_lines = time_once(kind, fn, module, cmd_argv)
                times[kind].append(dt)
                info[kind] = (rc, err_lines)
        before, after = statistics.median(times["before"]), statistics.median(times["after"])
        name = " ".join([prog, *cmd_argv])
        rows.append([name, before, after, before / after, info["before"][1], info["after"][1],
                     info["after"][0]])
        results.append({"command": name, "before_s": times["before"], "after_s": times["after"],
                        "stderr_lines_before": info["before"][1],
                        "stderr_lines_after": info["after"][1], "exit_status": info["after"][0]})
    os.environ["DMR_KERAS_DEFER_IMPORTS"] = "1"  # import the helper without Keras, as dmr_cli
    from dmr_keras.startup import filtered_stderr

    os.environ.pop("DMR_KERAS_DEFER_IMPORTS")
    with filtered_stderr():  # machine() imports TensorFlow for its version
        info = machine()
    print(f"machine: {json.dumps(info)}")
    print(table(["command", "before s", "after s", "before/after", "stderr lines before",
                 "stderr lines after", "exit"], rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "repeats": args.repeats, "results": results}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Every command in the README's ```bash blocks runs, each as its own case.

The commands are read from README.md, not listed here: a new ```bash command is run too, and
fails here if it cannot run. Each runs in a temporary directory with small substitutions, so
that it takes seconds and every flag the README shows is still passed:

- the fresh-machine lines (``python3 -m venv .venv && pip install ... && CMD``) run only CMD,
  with this venv's executables; the pytest line is not run (it would run this suite again): CI
  runs it (``.ci/run`` must hold that exact line);
- numbers shrink, flags stay: ``--epochs N`` -> 1 (a ``dmr-train`` without ``--epochs`` gets
  ``--epochs 1``), ``--max-trials N`` -> 1, ``--batch-size B`` -> at most 32 (the
  fixture has 70 training images);
- data placeholders (``PATH``, ``../shared/data/cifar10-jpeg``) -> a tiny CIFAR-10-layout
  folder of random PNGs (``train/<class>/`` + ``test/<class>/``);
- files a command reads (``model.keras``, ``my.weights.h5``, ``models.txt``,
  ``tuning_runs/x/``, a ``runs/...`` directory) are made first, from the outputs of the
  README's own commands where one writes them;
- ``dmr-zoo publish`` gets ``--manifest`` and ``--dest`` in the temporary directory, so the
  repository's ``zoo/weights.json`` and ``zoo/weights/`` are never written (checked).
"""

import csv
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
DATA_PLACEHOLDERS = ("../shared/data/cifar10-jpeg",)
SHELL_FENCES = {"sh", "shell", "console", "zsh", "bash-session", "shell-session"}
TIMEOUT_S = 600
PROTECTED = (ROOT / "zoo" / "weights.json", ROOT / "zoo" / "weights")  # never written here
# 70 training images: dmr-train's default batch (64) fits, as it does in a user's folder.
TRAIN_PER_CLASS = 7
MAX_BATCH = 32
MAX_TRIALS = 1  # a dmr-tune trial costs ~10 s of CPU; one shows every flag is accepted


# ---- extraction ---------------------------------------------------------------------------------


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` outside quotes, after a blank)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _fences(text: str):
    """``(language, first line number, [lines])`` of every fenced block."""
    blocks, lang, start, body = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip() or "-", number + 1, []
            else:
                blocks.append((lang, start, body))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"README.md: the fence opened at line {start - 1} is never closed"
    return blocks


def readme_commands(text: str | None = None) -> list[tuple[int, str]]:
    """``[(README line, command), ...]`` of every ```bash block: continuation lines joined,
    trailing comments stripped, blank lines skipped."""
    text = README.read_text() if text is None else text
    commands = []
    for lang, start, body in _fences(text):
        if lang != "bash":
            continue
        pending, first = "", None
        for number, raw in enumerate(body, start):
            line = _strip_comment(raw)
            if not line.strip() and not pending:
                continue
            if first is None:
                first = number
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            commands.append((first, (pending + line.strip()).strip()))
            pending, first = "", None
        assert not pending, f"README.md line {first}: a command ends in '\\' at the block's end"
    return commands


COMMANDS = readme_commands()


def _case_id(line: int, command: str) -> str:
    tail = command.split("&&")[-1].strip()
    tail = re.sub(r"^\.venv/bin/", "", tail)
    return f"L{line}-" + re.sub(r"[^\w.:=/-]+", "_", tail)[:70].strip("_")


# ---- substitutions ------------------------------------------------------------------------------


def _is_pytest(command: str) -> bool:
    return bool(re.search(r"(^|\s)(-m\s+)?pytest(\s|$)", command.split("&&")[-1]))


def substitute(command: str, data_dir: Path, tmp: Path) -> str:
    """The README command as the test runs it (see the module docstring)."""
    cmd = command.split("&&")[-1].strip()  # the fresh-machine lines: the command they run
    cmd = re.sub(r"(^|\s)\.venv/bin/", r"\1", cmd)  # this venv's executables, found on PATH
    for placeholder in DATA_PLACEHOLDERS:
        cmd = cmd.replace(placeholder, str(data_dir))
    cmd = re.sub(r"\bPATH\b", str(data_dir), cmd)
    cmd = re.sub(r"(?<![\w-])--epochs(\s+|=)\d+", r"--epochs\g<1>1", cmd)
    cmd = re.sub(r"(?<![\w-])--max-trials(\s+|=)(\d+)",
                 lambda m: f"--max-trials{m.group(1)}{min(int(m.group(2)), MAX_TRIALS)}", cmd)
    # Batches of the fixture's 70 training images, at most MAX_BATCH
    cmd = re.sub(r"(?<![\w-])--batch-size(\s+|=)(\d+)",
                 lambda m: f"--batch-size{m.group(1)}{min(int(m.group(2)), MAX_BATCH)}", cmd)
    program = shlex.split(cmd)[0]
    if program == "dmr-train" and not re.search(r"(?<![\w-])--epochs\b", cmd):
        cmd += " --epochs 1"
    if cmd.startswith("dmr-zoo publish"):
        cmd += (f" --manifest {shlex.quote(str(tmp / 'zoo' / 'weights.json'))}"
                f" --dest {shlex.quote(str(tmp / 'zoo' / 'weights'))}")
    return cmd


def _option(args: list[str], name: str):
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


# ---- the workspace: data, commands run once, the files commands read ---------------------------


def _tree_digest(*paths: Path) -> dict:
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) \
            if p.exists() else []
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _write_cifar_fixture(root: Path, per_split=(("train", TRAIN_PER_CLASS), ("test", 2))):
    """CIFAR-10 layout: ``split/<class>/*.png``, random 32x32 RGB images (70 + 20)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in per_split:
        for name in CIFAR10_CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


class Workspace:
    """A temporary directory where the README's commands run, each at most once."""

    def __init__(self, root: Path):
        self.root = root
        self.cwd = root / "work"
        self.cwd.mkdir()
        self.data = root / "cifar10"
        _write_cifar_fixture(self.data)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("DMR_KERAS_MANIFESTS", "DMR_KERAS_MIRROR", "TF_CONFIG",
                                 "TF_CPP_MIN_LOG_LEVEL")}  # the commands' own quietness
        self.env.update(PATH=str(BIN) + os.pathsep + os.environ.get("PATH", ""),
                        CUDA_VISIBLE_DEVICES="",
                        DMR_KERAS_HOME=str(root / "dmr_keras_home"),
                        KERAS_HOME=str(root / "keras_home"), MPLBACKEND="Agg")
        self.results = {}

    def command(self, readme_command: str) -> str:
        return substitute(readme_command, self.data, self.root)

    def run(self, readme_command: str) -> subprocess.CompletedProcess:
        """Run a README command (substituted) once; later calls return the same result."""
        cmd = self.command(readme_command)
        if cmd not in self.results:
            self.prepare(cmd)
            before = _tree_digest(*PROTECTED)
            self.results[cmd] = subprocess.run(["bash", "-c", cmd], cwd=self.cwd, env=self.env,
                                               capture_output=True, text=True,
                                               timeout=TIMEOUT_S)
            assert _tree_digest(*PROTECTED) == before, f"`{cmd}` changed the repository's zoo"
        return self.results[cmd]

    def run_ok(self, readme_command: str) -> subprocess.CompletedProcess:
        proc = self.run(readme_command)
        assert proc.returncode == 0, (
            f"`{self.command(readme_command)}` exited {proc.returncode}\n"
            f"--- stderr (tail) ---\n{proc.stderr[-3000:]}\n"
            f"--- stdout (tail) ---\n{proc.stdout[-1500:]}")
        return proc

    def _writes(self, command: str) -> tuple[str, str | None, str | None]:
        """``(program, dataset, the directory it writes)`` of a README command."""
        args = shlex.split(self.command(command))
        where = None
        if args[0] == "dmr-train":
            where = _option(args, "--output")
        elif args[0] == "dmr-tune":
            where = (f"{_option(args, '--directory') or 'tuning_runs'}/"
                     f"{_option(args, '--project') or 'dmr'}")
        return args[0], _option(args, "--dataset"), where

    def output_of(self, program: str, dataset: str) -> str:
        """The directory the first README ``program`` command on ``dataset`` writes, run."""
        for _, command in COMMANDS:
            if self._writes(command)[:2] == (program, dataset):
                self.run_ok(command)
                return self._writes(command)[2]
        raise AssertionError(f"the README has no {program} command on {dataset}")

    def ensure(self, relative: str) -> None:
        """Make ``relative`` (under the working directory), which a command reads, if missing:
        the output of the README command that writes it, else from such an output."""
        path = self.cwd / relative
        if path.exists():
            return
        for _, command in COMMANDS:
            if self._writes(command)[2] == relative:
                self.run_ok(command)
                return
        if relative.startswith("tuning_runs/") and relative.endswith("/best.json"):
            # e.g. tuning_runs/x/best.json: the README's dmr-tune project, under another name
            project = self.cwd / self.output_of("dmr-tune", "digits")
            path.parent.mkdir(parents=True, exist_ok=True)
            for name in ("best.json", "best.keras"):  # best.json names best.keras beside it
                shutil.copy2(project / name, path.parent / name)
        elif relative.endswith(".keras"):  # a digits model
            shutil.copy2(self.cwd / self.output_of("dmr-train", "digits") / "model.keras", path)
        elif relative.endswith(".weights.h5"):  # weights of a CIFAR-10 dmrnet_20
            run = self.cwd / self.output_of("dmr-train", "cifar10")
            assert json.loads((run / "metrics.json").read_text())["model"] == "dmrnet_20"
            shutil.copy2(run / "model.weights.h5", path)
        elif relative.endswith(".txt"):  # a --model-list of CIFAR-10 models
            run = self.output_of("dmr-train", "cifar10")
            path.write_text(f"# models for dmr-eval --model-list\n{run}\n")
        assert path.exists(), f"the test does not know how to make {relative}"

    def prepare(self, cmd: str) -> None:
        """Make the relative files and directories ``cmd`` reads (not those it writes)."""
        args = shlex.split(cmd)
        writes = {_option(args, o) for o in ("--output", "--results-file", "--directory",
                                             "--manifest", "--dest")}
        for i, arg in enumerate(args[1:], 1):
            if arg in writes or arg.startswith(("-", "/", "$")) or args[i - 1] in (
                    "--tag", "--model", "--arch", "--dataset", "--init-weights", "--tuner",
                    "--project", "--format"):
                continue
            if arg.startswith(("runs/", "tuning_runs/")) or re.fullmatch(
                    r"[\w.-]+\.(keras|weights\.h5|txt)", arg):
                self.ensure(arg)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("readme"))


# ---- the tests ----------------------------------------------------------------------------------


def test_readme_commands_are_found():
    """The extraction sees the README's commands (so an empty parametrization cannot pass)."""
    programs = [shlex.split(c.split("&&")[-1])[0].removeprefix(".venv/bin/") for _, c in COMMANDS]
    assert len(COMMANDS) >= 12, COMMANDS
    assert COMMANDS[0][1].startswith("python3 -m venv .venv") and "dmr-train" in COMMANDS[0][1]
    assert _is_pytest(COMMANDS[1][1])
    for program in ("dmr-train", "dmr-eval", "dmr-zoo", "dmr-tune"):
        assert program in programs
    joined = [c for _, c in COMMANDS]
    assert any("--warmup-epochs 2 --label-smoothing 0.1" in c for c in joined)  # joined `\`
    assert not any("#" in c for c in joined if "python -c" not in c)  # comments stripped
    synopses = [c for c in joined if re.search(r"\w\|\w|\[-", c)]  # a|b, [--flag]
    assert not synopses, f"a synopsis is in a ```bash block (make it ```text): {synopses}"


def test_no_commands_hide_in_other_shell_fences():
    """Shell commands go in ```bash blocks, where this test finds them; synopses in ```text."""
    langs = {lang for lang, _, _ in _fences(README.read_text())}
    assert not langs & SHELL_FENCES, f"use ```bash (run by tests/test_readme.py): {langs}"


def test_extraction_rules():
    text = ("```bash\n"
            "a --x 1 \\\n"
            "  --y 'p # q'   # note\n"
            "\n"
            "b  # only\n"
            "```\n"
            "```text\nc\n```\n")
    assert readme_commands(text) == [(2, "a --x 1 --y 'p # q'"), (5, "b")]
    data, tmp = Path("/d"), Path("/t")
    assert substitute("python3 -m venv .venv && .venv/bin/pip install -q -e . && "
                      ".venv/bin/dmr-train --epochs 15 --warmup-epochs 3", data, tmp) == \
        "dmr-train --epochs 1 --warmup-epochs 3"
    assert substitute("dmr-tune --max-trials 4 --epochs 3 --batch-sizes 16 64", data, tmp) == \
        "dmr-tune --max-trials 1 --epochs 1 --batch-sizes 16 64"
    assert substitute("dmr-train --epochs 40 --batch-size 128", data, tmp) == \
        "dmr-train --epochs 1 --batch-size 32"
    assert substitute("dmr-train --dataset folder:PATH", data, tmp) == \
        "dmr-train --dataset folder:/d --epochs 1"
    assert substitute("dmr-eval x --data-dir ../shared/data/cifar10-jpeg", data, tmp) == \
        "dmr-eval x --data-dir /d"


@pytest.mark.parametrize("line, command", COMMANDS,
                         ids=[_case_id(line, c) for line, c in COMMANDS])
def test_readme_command(workspace, line, command):
    if _is_pytest(command):
        # Running the suite from inside the suite would recurse: CI runs this exact line.
        assert command in (ROOT / ".ci" / "run").read_text().splitlines(), (
            f"README.md line {line}: CI (.ci/run) does not run `{command}`")
        return
    cmd = workspace.command(command)
    args = shlex.split(cmd)
    assert (BIN / args[0]).exists() or shutil.which(args[0], path=workspace.env["PATH"]), (
        f"README.md line {line}: `{args[0]}` is not an executable of this package's venv")
    proc = workspace.run_ok(command)
    out = proc.stdout + proc.stderr
    cwd = workspace.cwd

    # A normal run is quiet: no Keras warnings a user cannot act on, no TensorFlow notices.
    for noise in ("`shuffle=True` was passed", "Skipping variable loading for optimizer",
                  "absl::InitializeLog", "failed call to cuInit"):
        assert noise not in out, f"README.md line {line}: {noise!r} in the output:\n{out[-1500:]}"
    if args[0] == "dmr-train":
        output = _option(args, "--output")
        if output is None:  # dmr-train's default, runs/MODEL-DATASET: it prints where
            match = re.search(r"^test accuracy .* -> (\S+)$", proc.stdout, re.M)
            assert match, f"dmr-train did not say where it wrote its run:\n{out[-1500:]}"
            output = match.group(1)
        metrics = json.loads((cwd / output / "metrics.json").read_text())
        assert metrics["epochs"] == 1 and 0 <= metrics["test_accuracy"] <= 1
    elif args[0] == "dmr-eval":  # every option of dmr-eval takes a value
        models = [a for i, a in enumerate(args[1:], 1)
                  if not a.startswith("-") and not args[i - 1].startswith("--")]
        listed = _option(args, "--model-list")
        if listed:
            models += [s.split("#", 1)[0].strip() for s in (cwd / listed).read_text().splitlines()
                       if s.split("#", 1)[0].strip()]
        rows = re.findall(r"top-1 \d+\.\d+ %\s+top-5 \d+\.\d+ %", proc.stdout)
        assert len(rows) == len(models) > 0, (
            f"dmr-eval printed {len(rows)} top-1 line(s) for {models}:\n{proc.stdout[-1500:]}")
        results = _option(args, "--results-file")
        if results:
            with open(cwd / results) as fh:
                assert len(list(csv.DictReader(fh))) >= len(models)
    elif args[:2] == ["dmr-zoo", "publish"]:
        manifest = json.loads((workspace.root / "zoo" / "weights.json").read_text())
        key = f"{json.loads((cwd / args[2] / 'metrics.json').read_text())['model']}." \
              f"{_option(args, '--tag')}"
        entry = manifest["weights"][key]
        assert (workspace.root / "zoo" / "weights" / entry["file_name"]).is_file()
        assert re.fullmatch(r"[0-9a-f]{64}", entry["provenance"]["data_sha256"])
        assert f"published {key}" in proc.stdout
    elif args[0] == "dmr-tune":
        project = cwd / workspace._writes(command)[2]
        assert (project / "leaderboard.csv").is_file()
        best = json.loads((project / "best.json").read_text())
        assert best["params"] <= int(_option(args, "--max-params") or 10**12)

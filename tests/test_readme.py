"""The README's commands, as written: the "One cell, ad hoc" block runs end to end (fewer images and epochs), every
`make` line of its command blocks passes Make's checks and the scripts' (`make -n`), and every script line their
`--check`. A README edit that breaks one of them fails here."""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
BLOCKS = re.findall(r"^```\n(.*?)^```", README, re.S | re.M)  # the command blocks (not ```python)


def commands(prefix):
    """The lines of the command blocks that start with prefix, continuation lines joined, comments dropped."""
    out = []
    for block in BLOCKS:
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith(prefix):
                out.append(shlex.split(line, comments=True))
    return out


def test_the_ad_hoc_block_runs_as_written(tmp_path):
    """In a folder of its own (the scripts linked in, .venv/bin/python this interpreter), with the block's T and E
    shrunk: fewer images, one epoch, a weaker strong attack. Every line's output is there, and the report shows the
    two rows the README says."""
    block = README.split("## One cell, ad hoc")[1].split("```")[1]
    tiny = {"--epochs 2": "--epochs 1", "--limit 1000": "--limit 100", "--limit 200": "--limit 50",
            "--strong-steps 10": "--strong-steps 2"}
    for old, new in tiny.items():
        assert block.count(old) == 1, old  # the README's knobs, where the test expects them
        block = block.replace(old, new)
    for f in os.listdir(ROOT):
        if f.endswith(".py"):
            os.symlink(os.path.join(ROOT, f), tmp_path / f)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    py = tmp_path / ".venv" / "bin" / "python"  # a wrapper: a link to a venv's python leaves its venv
    py.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    py.chmod(0o755)
    r = subprocess.run(["bash", "-eo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    outs = re.findall(r"--out \$R/(\S+)", block)
    assert len(outs) == 7 and all((tmp_path / "runs" / "adhoc" / o).exists() for o in outs), outs
    assert "R_pgd" in r.stdout and "R_{pgd->pgd} 12" in r.stdout, r.stdout[-3000:]


MAKE_LINES = commands("make ")


@pytest.mark.parametrize("line", MAKE_LINES, ids=[" ".join(x) for x in MAKE_LINES])
def test_every_make_line_passes_every_check(line, tmp_path):
    """`make -n` runs Make's checks and check.py (the scripts' own checks of every stage's command), and prints
    the plan without running it. NGPU=1 stands in for a GPU machine; FOLDER for a folder of the four .npz files."""
    data = tmp_path / "npz"
    data.mkdir()
    for d in ("cifar10", "cifar100"):
        for s in ("train", "test"):
            (data / f"{d}_{s}.npz").write_bytes(b"")
    args = [a.replace("FOLDER", str(data)) for a in line[1:]]
    py = [] if ".venv/installed" in args else [f"PY={sys.executable}"]  # that line builds the default PY itself
    r = subprocess.run(["make", "-n", "--no-print-directory", *py, "NGPU=1", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "***" not in r.stderr, r.stderr


def test_every_script_line_passes_its_check():
    """The scripts' command lines (`.venv/bin/python SCRIPT ...`), each with --check, in one check.py process."""
    lines = commands(".venv/bin/python ")
    assert len(lines) >= 3
    jobs = [tok for i, x in enumerate(lines) for tok in (f"::README line {i + 1}", *x[1:])]
    r = subprocess.run([sys.executable, "check.py", *jobs], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr

"""The Makefile as a build system, fast: a stand-in interpreter (PY=tests/fakepy.py) writes every output a job
names and logs the job, so whole-grid plans run in a second. Make must rebuild exactly what is missing or out of
date after any file is deleted (the README's rebuild sentences), and refuse a bad variable before the first job.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fakepy.py"
GRID = ["DATA=synthetic", "ARCH=resnet8"]


def make(*args, cwd=ROOT, env=None):
    return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def jobs(log):
    """The jobs the stand-in ran since the log was last read: (script, --out) pairs."""
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    log.write_text("")
    return [tuple(line.split(" ", 1)) for line in lines]


@pytest.fixture
def built(tmp_path):
    """A run tree where the whole grid has been 'built' by the stand-in: (run folder, log, make(...) bound)."""
    run, log = tmp_path / "run", tmp_path / "jobs.log"
    fake = tmp_path / "py"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    fake.chmod(0o755)

    def mk(*args):
        r = make(f"PY={fake}", f"RUN={run}", *GRID, *args, env={"FAKEPY_LOG": str(log)})
        assert r.returncode == 0, r.stdout + r.stderr
        return jobs(log)
    first = mk("all")
    assert len(first) == 3 + 3 + 9 + 1 + 1 + 34 + 1  # sources, baselines, transfer cohorts, DenseNet, examples,
    assert mk("all") == []  # evaluations, report; then nothing to do
    return run, mk


def scripts(js):
    return sorted(s for s, _ in js)


def test_deleted_transfers_are_retrained_and_reevaluated(built):
    run, mk = built
    for p in (run / "transfer").glob("*.pt"):  # the README: `rm runs/paper/transfer/*` ...
        p.unlink()
    js = mk("all")
    assert scripts(js) == ["evaluate.py"] * 27 + ["report.py"] + ["transfer.py"] * 9
    assert all("/transfer/" in out or s == "report.py" for s, out in js)


def test_a_deleted_evaluation_is_redone_alone(built):
    run, mk = built
    (run / "transfer" / "pgd-pgd-12_s0.eval.json").unlink()
    assert mk("all") == [("evaluate.py", str(run / "transfer" / "pgd-pgd-12_s0.eval.json")),
                         ("report.py", str(run / "report"))]


def test_a_deleted_source_retrains_what_depends_on_it(built):
    run, mk = built
    (run / "source" / "cifar100_fgsm_s0.pt").unlink()
    js = mk("all")
    outs = {out for _, out in js}
    assert scripts(js) == ["evaluate.py"] * 10 + ["report.py", "train_source.py"] + ["transfer.py"] * 3
    assert str(run / "source" / "cifar100_fgsm_s0.eval.json") in outs
    assert {out.split("/")[-1] for s, out in js if s == "evaluate.py"} - {"cifar100_fgsm_s0.eval.json"} == {
        f"fgsm-{t}-{u}_s0.eval.json" for t in ("nat", "fgsm", "pgd") for u in (1, 12, 56)}


def test_deleted_examples_are_recrafted_and_every_cifar10_model_reevaluated(built):
    run, mk = built
    (run / "blackbox" / "examples.pt").unlink()
    js = mk("all")
    assert scripts(js) == ["evaluate.py"] * (1 + 30) + ["report.py"]  # crafting + 3 baselines and 27 transfers


def test_a_deleted_report_is_rewritten_alone(built):
    run, mk = built
    (run / "report" / "report.md").unlink()
    assert scripts(mk("all")) == ["report.py"]


@pytest.mark.parametrize("var, says", [
    ("SRC=foo", "SRC=foo: each must be one of nat fgsm pgd"),
    ("UNFREEZE=7", "UNFREEZE=7: each must be one of"),
    ("BASE=nat nat", "BASE=nat nat names a value twice"),
    ("SEEDS=a", "SEEDS=a: one or more non-negative integers"),
    ("SEEDS=", "SEEDS=: one or more non-negative integers"),
    ("EPOCHS_TL=0", "EPOCHS_TL=0: one integer above 0"),
    ("ARCH=resnet9", "ARCH=resnet9"),
    ("RUN=runs/sp ace", "RUN='runs/sp ace': a path with spaces"),
    ("DATA=TRAINONLY", "lacks cifar10_test.npz cifar100_test.npz"),
])
def test_a_bad_variable_stops_make_before_any_job(tmp_path, var, says):
    """One line naming the variable, exit 2, no job run (here: `make -n` prints no command), for every goal
    that runs the pipeline."""
    if "TRAINONLY" in var:
        d = tmp_path / "trainonly"
        d.mkdir()
        for n in ("cifar10_train.npz", "cifar100_train.npz"):
            (d / n).write_bytes(b"")
        var = var.replace("TRAINONLY", str(d))
    py = sys.executable if var.split("=")[0] in ("SRC", "UNFREEZE") else "python3"  # names: common.py's tables
    for goal in ("all", "transfers", "mini"):
        r = make("-n", f"PY={py}", var, goal)
        assert r.returncode == 2 and r.stdout == "", (goal, r.stdout)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0] and "Stop." in lines[0], r.stderr

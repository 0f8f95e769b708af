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


# ----------------------------------------------------------------------------------------------------------
# Every stage's command checked by its own script (check.py) before the first job; no GPU, no wait; make status

def fake_py(tmp_path, body=None):
    """An interpreter for PY: the stand-in (fakepy.py), or a wrapper running `body`."""
    p = tmp_path / "py"
    p.write_text("#!/bin/sh\n" + (body or f"exec {sys.executable} {FAKE} \"$@\"") + "\n")
    p.chmod(0o755)
    return p


def one_line_stop(r, *says):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Stop." in lines[0], r.stdout + r.stderr
    assert all(s in lines[0] for s in says) and "Traceback" not in r.stderr, lines[0]
    return lines[0]


@pytest.mark.parametrize("args, says", [
    (["EVAL_FLAGS=--precision fp16", "all"], ["EVAL_FLAGS='--precision fp16': evaluate.py", "invalid choice: 'fp16'"]),
    (["TRAIN_FLAGS=--batch-size 0", "sources"], ["TRAIN_FLAGS='--batch-size 0'", "--batch-size must be positive"]),
    (["BB_FLAGS=--growth 0", "all"], ["BB_FLAGS='--growth 0': train_blackbox.py", "--growth must be positive"]),
    (["SRC_FLAGS=--epochs 0", "all"], ["SRC_FLAGS='--epochs 0': train_source.py", "--epochs and --batch-size"]),
    (["BASE_FLAGS=--lr -1", "all"], ["BASE_FLAGS='--lr -1': train_source.py", "--lr positive"]),
    (["TL_FLAGS=--freeze-bn 3", "all"], ["TL_FLAGS='--freeze-bn 3': transfer.py", "unrecognized arguments: 3"]),
    (["TRAIN_FLAGS=--arch resnet20 --lr -1", "all"], ["TRAIN_FLAGS='--arch resnet20 --lr -1'", "--lr positive"]),
    (["DEPTHS=1 b5", "depth"], ["DEPTHS='1 b5' (ARCH=resnet8)", "--unfreeze b5: this ResNet has 3 residual blocks"]),
    (["DEPTHS=1 b1 12", "depth"], ["DEPTHS='1 b1 12' (ARCH=resnet8)", "b1 is this ResNet's 12", "write 12"]),
    (["UNFREEZE=1 b1", "all"], ["UNFREEZE='1 b1' (ARCH=resnet8)", "write 12"]),
    (["ARCH=resnet20", "depth"], ["DEPTHS='1 b1 b3 b6 12 b14 b18 56' (ARCH=resnet20)", "b3 is this ResNet's 12"]),
])
def test_every_stage_command_is_checked_by_its_script_before_any_job(tmp_path, args, says):
    """The scripts' own checks (every flag of every *_FLAGS, depths against ARCH's blocks, one name per depth) run
    once, in one process, when make starts: one line naming the variable, no job run, nothing written."""
    log = tmp_path / "jobs.log"
    r = make(f"PY={fake_py(tmp_path)}", f"RUN={tmp_path / 'run'}", *GRID, "SRC=pgd", "TGT=nat", *args,
             env={"FAKEPY_LOG": str(log), "FAKEPY_CHECK": "1"})
    one_line_stop(r, *says)
    assert jobs(log) == [] and not (tmp_path / "run").exists()


def test_a_scripts_check_reads_and_writes_nothing(tmp_path):
    """--check parses and checks the flags only: a missing data folder or checkpoint is the run's to find; a bad
    flag is one line, exit 2."""
    def run(*args):
        return subprocess.run([sys.executable, *map(str, args), "--check"], cwd=ROOT, capture_output=True, text=True)
    out = tmp_path / "o" / "x_s{seed}.pt"
    for args in (["train_source.py", "--data-dir", tmp_path / "none", "--seed", "0", "1", "--out", out],
                 ["evaluate.py", "--ckpt", tmp_path / "none.pt", "--out", tmp_path / "o" / "x.eval.json"],
                 ["transfer.py", "--src", "pgd", "--tgt", "nat", "--unfreeze", "1", "b3", "--init",
                  tmp_path / "none.pt", "--out", out.with_name("{unfreeze}_s{seed}.pt")]):
        r = run(*args)
        assert r.returncode == 0 and r.stdout == r.stderr == "", r.stdout + r.stderr
    assert os.listdir(tmp_path) == []
    r = run("transfer.py", "--src", "pgd", "--tgt", "nat", "--unfreeze", "b1", "--arch", "resnet8")
    assert r.returncode == 2 and r.stderr == "error: --arch resnet8: --unfreeze b1 is this ResNet's 12 (its layer3 " \
        "has 1 residual block): the last stage (layer3) and the head; write 12, so that one depth has one name\n"


def test_the_check_passes_what_the_jobs_take_and_runs_once(tmp_path):
    """Good values pass (the smoke's flags, a depth sweep on ResNet8), and the depth sweep's own make does not check
    again: check.py runs once per make, not once per job."""
    log, calls = tmp_path / "jobs.log", tmp_path / "calls"
    py = fake_py(tmp_path, f'[ "$1" = check.py ] && echo x >> {calls}\nexec {sys.executable} {FAKE} "$@"')
    smoke = ["TRAIN_FLAGS=--limit 400 --batch-size 25 --eps 2 --steps 3 --device cpu", "BB_FLAGS=--growth 4",
             "EVAL_FLAGS=--limit 50 --strong-steps 5 --restarts 2 --curve-eps 0 8 32 --device cpu"]
    r = make(f"PY={py}", f"RUN={tmp_path / 'run'}", *GRID, "SRC=pgd", "TGT=nat", "DEPTHS=1 b2 56", *smoke, "depth",
             env={"FAKEPY_LOG": str(log), "FAKEPY_CHECK": "1"})
    assert r.returncode == 0, r.stderr
    assert calls.read_text().count("x") == 1 and ("transfer.py", str(tmp_path / "run" / "transfer" /
                                                  "{src}-{tgt}-{unfreeze}_s{seed}.pt")) in jobs(log)
    r = make(f"PY={py}", *GRID, *smoke, "check", env={"FAKEPY_LOG": str(log), "FAKEPY_CHECK": "1"})
    assert r.returncode == 0 and r.stdout == "every stage's command passes its script's check\n" and jobs(log) == []


def test_a_python_without_torch_is_one_line_with_the_fix(tmp_path):
    """`make PY=python3 smoke` where python3 lacks torch: no traceback, one line saying what to do."""
    py = fake_py(tmp_path, f'exec {sys.executable} -S "$@"')  # -S: no site-packages, so no torch
    for goal in ("all", "smoke"):
        r = make(f"PY={py}", f"RUN={tmp_path / 'run'}", goal)
        one_line_stop(r, f"PY={py} cannot run the scripts", "No module named", "-m pip install -r requirements.txt")


def test_no_gpu_is_one_line_at_once(tmp_path):
    """make gpu-check and LAUNCH='$(GPULOCK)' on a machine without a GPU (NGPU=0) stop at once; GPULOCK itself, used
    anyway, fails instead of waiting forever for a GPU that is not there."""
    for args in (["gpu-check"], ["LAUNCH=$(GPULOCK)", "all"], ["LAUNCH=$(GPULOCK)", "NGPU=", "all"]):
        one_line_stop(make("NGPU=0", f"RUN={tmp_path / 'run'}", *args), "no GPU")
    r = make("NGPU=0", "--eval", "lock: ; @$(GPULOCK) echo ran", "lock")
    assert r.returncode != 0 and r.stdout == "" and "GPULOCK: no GPU to take (NGPU=0)" in r.stderr


def test_each_depth_pair_has_its_own_report(built):
    """A second `make depth` with another source x target writes beside the first, never over it."""
    run, mk = built
    mk("SRC=pgd", "TGT=nat", "DEPTHS=1 b2 56", "depth")
    mk("SRC=nat", "TGT=pgd fgsm", "DEPTHS=1 b2 56", "depth")
    assert sorted(p.parent.name for p in (run / "depth").rglob("report.md")) == ["nat-pgd_fgsm", "pgd-nat"]


def test_make_status_shows_built_missing_running_and_the_share_done(built):
    import fcntl
    run, mk = built
    for p in ((run / "transfer" / "pgd-nat-12_s0.pt"), (run / "transfer" / "pgd-nat-12_s0.eval.json")):
        p.unlink()
    out = run / "transfer" / "pgd-nat-12_s0.pt"
    (run / "transfer" / "pgd-nat-12_s0.jsonl").write_text("{}\n{}\n")  # two epochs done
    stale = run / "transfer" / "pgd-nat-1_s0.eval.json.lock"  # left by a run killed with -9: free, not running
    stale.write_text("pid 1: evaluate.py --out x")
    with open(str(out) + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write(f"pid {os.getpid()}: transfer.py --epochs 50 --out X")
        f.flush()
        r = make(f"RUN={run}", *GRID, "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{run}: 68 of 70 outputs built (97%), 50 of 52 jobs done, 1 running"
    assert "  transfers   26 of  27 built; missing: pgd-nat-12_s0.pt" in lines
    assert "  evals       33 of  34 built; missing: pgd-nat-12_s0.eval.json" in lines
    assert [x for x in lines if x.startswith("running:")] == [
        f"running: {out}: pid {os.getpid()}, epoch 3 of 50 (transfer.py --epochs 50 --out X)"]
    assert mk() == []  # status started nothing (make with no goal prints help)

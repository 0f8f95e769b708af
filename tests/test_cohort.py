"""Cohorts: one process training several models equals separate runs of each, file for file. Also the pieces
under them: the step-maker's eager path, the pure learning-rate schedule, the collapse verdict, and how a run
treats a finished output (kept), --force (retrained) and a second run on the same output (refused)."""
import copy
import json
import os
import shutil
import subprocess

import pytest
import torch

import common as c
import engine
import train_source
import transfer
from test_scripts import TIMING, assert_identical, check_one_line_error, outputs, snapshot, strip_timing


def load_run(out):
    f = outputs(out)
    with open(f["json"]) as fj, open(f["jsonl"]) as fl, open(str(out)[:-3] + ".log") as fg:
        log = [line.rstrip().split(" | lr")[0].replace(", cohort of 3", "").replace(", cohort of 2", "")
               for line in fg if not line.startswith("wrote")]
        return {"pt": torch.load(f["pt"]), "last": torch.load(f["last"]), "json": json.load(fj),
                "rows": [json.loads(r) for r in fl], "log": log}


def assert_same_run(a, b):
    """Two runs' files agree bit for bit, timing and their own paths aside; weights within 1e-5 (they are equal)."""
    for k in ("pt", "last"):
        wa, wb = a[k]["model"], b[k]["model"]
        assert max((wa[n].float() - wb[n].float()).abs().max().item() for n in wa) <= 1e-5
        assert_identical(a[k], b[k], k, ignore=TIMING | {"out"})
    ja, jb = (strip_timing({k: v for k, v in r["json"].items() if k not in ("args",)}) for r in (a, b))
    assert ja == jb
    assert strip_timing(a["rows"]) == strip_timing(b["rows"]) and a["log"] == b["log"]


def test_transfer_cohort_equals_separate_runs(tmp_path, tiny, tiny_source):
    args = ["--src", "nat", "--tgt", "pgd", "--steps", "2", "--init", str(tiny_source), *tiny(), "--epochs", "2"]
    transfer.main([*args, "--unfreeze", "1", "12", "56", "--out", str(tmp_path / "cohort" / "{unfreeze}.pt")])
    for u in (1, 12, 56):
        transfer.main([*args, "--unfreeze", str(u), "--out", str(tmp_path / "alone" / f"{u}.pt")])
        a, b = load_run(tmp_path / "cohort" / f"{u}.pt"), load_run(tmp_path / "alone" / f"{u}.pt")
        assert a["pt"]["unfreeze"] == u and a["pt"]["args"]["unfreeze"] == u
        assert_same_run(a, b)


def test_seed_cohort_with_random_start_equals_separate_runs(tmp_path, tiny):
    # PGD's random starts come from each member's own generator: interleaving members changes none of them
    args = ["--dataset", "cifar10", "--adv", "pgd", "--steps", "1", "--random-start", *tiny(), "--epochs", "2"]
    train_source.main([*args, "--seed", "0", "1", "--out", str(tmp_path / "cohort" / "s{seed}.pt")])
    for s in (0, 1):
        train_source.main([*args, "--seed", str(s), "--out", str(tmp_path / "alone" / f"s{s}.pt")])
        assert_same_run(load_run(tmp_path / "cohort" / f"s{s}.pt"), load_run(tmp_path / "alone" / f"s{s}.pt"))
    w0, w1 = (torch.load(tmp_path / "cohort" / f"s{s}.pt")["model"]["linear.weight"] for s in (0, 1))
    assert not torch.equal(w0, w1)  # the seeds are different runs


def test_default_names_are_those_of_separate_runs(tmp_path, tiny, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_source.main(["--dataset", "cifar10", *tiny(), "--seed", "3", "4"])
    assert sorted(os.listdir(tmp_path / "runs" / "paper" / "baseline")) == sorted(
        f"cifar10_nat_s{s}{ext}" for s in (3, 4) for ext in (".pt", ".last.pt", ".json", ".jsonl", ".log"))  # no lock


@pytest.mark.parametrize("adv", list(c.OBJECTIVES))
def test_step_maker_eager_is_train_step(adv):
    torch.manual_seed(0)
    models = [c.build_model("resnet8", 10) for _ in range(2)]
    refs = copy.deepcopy(models)
    sgd = lambda ms: [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5) for m in ms]  # noqa
    opts, ref_opts = sgd(models), sgd(refs)
    step = engine.make_step(models, opts, adv, c.EPS, steps=2)
    x, y = c.synthetic("cifar10", True, 32)
    x = x.float() / 255
    for i in range(2):  # two steps: the momentum buffers matter in the second
        bs = [(x[:16], y[:16]), (x[16:], y[16:])]
        gens = lambda: [torch.Generator().manual_seed(10 * i + j) for j in range(2)]  # noqa: E731 (TRADES draws)
        got = step(bs, gens())
        for m, o, (xb, yb), g, gen in zip(refs, ref_opts, bs, got, gens()):
            want = c.train_step(m, o, xb, yb, adv, c.EPS, steps=2, gen=gen)
            assert all(torch.equal(u, v) for u, v in zip(g, want)), (adv, i)
    for m, r in zip(models, refs):
        assert all(torch.equal(p, q) for p, q in zip(m.state_dict().values(), r.state_dict().values()))


@pytest.mark.parametrize("epochs, milestones", [(200, [0.5, 0.75]), (50, [0.4, 0.8]), (1, [0.5, 0.75]), (3, [0.5]),
                                                (7, [])])
def test_lr_schedule_is_the_authors_step_schedule(epochs, milestones):
    """The pure function gives, epoch by epoch, what torch's MultiStepLR gives at the authors' epochs."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, round(f * epochs)) for f in milestones], 0.1)
    for e in range(epochs):
        assert engine.lr_at(e, 0.1, epochs, milestones) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), e
        opt.step()
        sched.step()
    if epochs == 200:
        lrs = [engine.lr_at(e, 0.1, 200, milestones) for e in (99, 100, 149, 150)]
        assert lrs == pytest.approx([.1, .01, .01, .001])


def test_collapse_verdict():
    rows = lambda *v: [{"epoch": i + 1, "train_batch_pgd": x} for i, x in enumerate(v)]  # noqa: E731
    assert engine.collapse_verdict(rows(5, 20, 30, 8)).startswith("train-batch PGD accuracy fell to 8.0% at epoch 4 "
                                                             "from 30.0% at epoch 3")
    assert engine.collapse_verdict(rows(5, 20, 30, 9.5)) is None  # above 30% of the best
    assert engine.collapse_verdict(rows(8, 9, 1)) is None  # a best under 10% is the monitor's noise
    assert engine.collapse_verdict([{"epoch": 1, "val_clean": 50}]) is None  # natural runs have no monitor


def test_a_finished_run_is_kept_and_force_retrains_it(tmp_path, tiny, run_script):
    out = tmp_path / "x.pt"
    args = ["--dataset", "cifar10", *tiny(), "--out", out]
    assert run_script("train_source.py", args, tmp_path).returncode == 0
    before = snapshot(tmp_path)
    r = run_script("train_source.py", args, tmp_path)
    assert r.returncode == 0 and "exists; nothing to do" in r.stdout and "epoch" not in r.stdout
    assert snapshot(tmp_path) == before
    r = run_script("train_source.py", [*args, "--force"], tmp_path)
    assert r.returncode == 0 and "epoch   1/1" in r.stdout
    assert os.stat(out).st_mtime_ns > before[str(out)][1]


def test_a_second_run_on_the_same_output_is_refused(tmp_path, tiny, run_script):
    out = tmp_path / "x.pt"
    with engine.output_lock(str(out)):  # this test process is the first run
        r = run_script("train_source.py", ["--dataset", "cifar10", *tiny(), "--out", out], tmp_path)
    line = check_one_line_error(r)
    assert str(out) in line and f"pid {os.getpid()}" in line
    assert not out.exists() and not os.path.exists(str(out)[:-3] + ".last.pt")


def test_locks_are_removed_when_a_run_ends_and_a_killed_runs_lock_is_taken_over(tmp_path, tiny):
    """No *.lock litters a finished run; one left by kill -9 (a file nobody holds) is taken over and removed. And
    a run that opened a lock file its holder removed meanwhile locks the new one, so two runs never both hold it."""
    out = tmp_path / "x.pt"
    (tmp_path / "x.pt.lock").write_text("pid 1: a run killed with -9")
    train_source.main(["--dataset", "cifar10", *tiny(), "--out", str(out)])
    assert out.exists() and not list(tmp_path.glob("*.lock"))
    with engine.output_lock(str(out)):
        stale = open(str(out) + ".lock")  # opened by a second run just before the first removes it
        assert (tmp_path / "x.pt.lock").read_text().startswith(f"pid {os.getpid()}:")
    assert not (tmp_path / "x.pt.lock").exists()
    # a third run holds the new file: the second, late to lock its old one, is refused
    with engine.output_lock(str(out)):
        import fcntl
        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old file's lock is free, but it is not the lock
        with pytest.raises(c.UsageError, match="being written by another run"):
            with engine.output_lock(str(out)):
                pass
    stale.close()


def test_a_cohort_header_counts_the_members_that_train(tmp_path, tiny, tiny_source):
    """Two of three depths finished: the third trains alone and its log does not claim a cohort of 3."""
    args = ["--src", "nat", "--tgt", "nat", "--init", str(tiny_source), *tiny(),
            "--out", str(tmp_path / "{unfreeze}.pt")]
    transfer.main([*args, "--unfreeze", "1", "56"])
    assert "cohort of 2" in (tmp_path / "1.log").read_text()
    transfer.main([*args, "--unfreeze", "1", "b2", "56"])
    log = (tmp_path / "b2.log").read_text()
    assert "epoch   1/1" in log and "cohort of" not in log


def test_a_moved_run_folder_resumes_and_keeps_its_finished_models(tmp_path, tiny, tiny_source, capsys):
    """`mv runs/a runs/b`: the same commands with the new paths find the finished models (a transfer's --init moved
    with it) and resume an unfinished one, instead of refusing them as runs 'with other arguments (--out ...)'."""
    a, b = tmp_path / "a", tmp_path / "b"
    src = a / "source" / "cifar100_nat_s0.pt"
    train_source.main(["--dataset", "cifar100", *tiny(), "--out", str(src)])
    tl = lambda r, init=None: ["--src", "nat", "--tgt", "nat", "--unfreeze", "12", "--init",  # noqa: E731
                               str(init or r / "source" / "cifar100_nat_s0.pt"), *tiny(), "--epochs", "2",
                               "--out", str(r / "transfer" / "t.pt")]
    transfer.main(tl(a))
    os.remove(a / "transfer" / "t.pt")  # cut off after its last epoch: only the resume state is left
    os.rename(a, b)
    capsys.readouterr()
    train_source.main(["--dataset", "cifar100", *tiny(), "--out", str(b / "source" / "cifar100_nat_s0.pt")])
    transfer.main(tl(b))
    said = capsys.readouterr().out
    assert "cifar100_nat_s0.pt exists; nothing to do" in said and "resuming" in said and "after epoch 2/2" in said
    assert (b / "transfer" / "t.pt").exists()
    other = b / "other.pt"  # another source (older than the transfer: not a retrained one) is still refused
    shutil.copy(b / "source" / "cifar100_nat_s0.pt", other)
    os.utime(other, (0, 0))
    with pytest.raises(c.UsageError, match=r"--init \.\./source/cifar100_nat_s0.pt -> \.\./other.pt"):
        transfer.main(tl(b, other))


def test_makefile_trains_each_cohort_with_one_command():
    """`make -n` of one transfer cell: its source, then one command for the three strategies (and every seed)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(["make", "-n", "PY=python3", "CHECKED=1", "RUN=/nonexistent/run", "SEEDS=0 1",
                        "/nonexistent/run/transfer/pgd-fgsm-12_s1.pt"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cmds = [line for line in r.stdout.replace("\\\n", " ").splitlines() if "python3" in line]
    assert len(cmds) == 2 and "train_source.py --dataset cifar100 --adv pgd" in cmds[0]
    assert "--seed 0 1" in cmds[0] and "{seed}" in cmds[0]
    assert "transfer.py --src pgd --tgt fgsm --unfreeze 1 12 56" in cmds[1] and "--seed 0 1" in cmds[1]


class Crash(Exception):
    pass


def test_cohort_resumes_each_member_where_it_stopped(tmp_path, tiny, monkeypatch):
    """Seed 0 was cut off after epoch 1; the cohort of seeds 0 and 1 then resumes it and trains seed 1 afresh
    (the members join at different epochs): each still equals its uninterrupted separate run."""
    args = ["--dataset", "cifar10", "--adv", "fgsm", "--steps", "1", *tiny(), "--epochs", "3", "--milestones", "0.5"]
    template = str(tmp_path / "cohort" / "s{seed}.pt")
    real = engine.atomic_save

    def crash_after_epoch_1(obj, path):
        real(obj, path)
        if path.endswith(".last.pt") and obj["epoch"] == 1:
            raise Crash

    monkeypatch.setattr(engine, "atomic_save", crash_after_epoch_1)
    with pytest.raises(Crash):
        train_source.main([*args, "--seed", "0", "--out", template])
    monkeypatch.undo()
    train_source.main([*args, "--seed", "0", "1", "--out", template])
    for s in (0, 1):
        train_source.main([*args, "--seed", str(s), "--out", str(tmp_path / "alone" / f"s{s}.pt")])
        a, b = load_run(tmp_path / "cohort" / f"s{s}.pt"), load_run(tmp_path / "alone" / f"s{s}.pt")
        if s == 0:  # cut off before its epoch-1 line; then the resumed run appended its own lines
            assert [x.split(" |")[0] for x in a["log"] if x.startswith(("epoch", "resuming"))] == [
                f"resuming {tmp_path / 'cohort' / 's0.pt'} after epoch 1/3", "epoch   2/3", "epoch   3/3"]
            a["log"] = b["log"]
        assert_same_run(a, b)

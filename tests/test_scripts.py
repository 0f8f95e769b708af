"""Smoke runs of the three training scripts (one tiny epoch on synthetic data, pytorch/examples style) that check
what they write, an exact kill-and-resume, and every kind of bad input: exit status 2, one line on stderr, no
traceback and no file written."""
import json
import os

import pytest
import torch

import common as c
import engine
import train_source
import transfer

# the only things two identical runs may differ in: when, how fast, and how their steps ran (device, cohort, ...)
TIMING = {"seconds", "images_per_s", "date", "wall_s", "steps_ran"}


def rows_of(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def outputs(out):
    base = str(out)[:-3]
    return {"pt": str(out), "last": base + ".last.pt", "json": base + ".json", "jsonl": base + ".jsonl"}


def check_outputs(out, *, epochs, dataset, adv, arch, num_classes, lr=0.1):
    """The four files of a finished run and how they agree with each other; returns (final, last) checkpoints."""
    f = outputs(out)
    for p in f.values():
        assert os.path.isfile(p), p
    assert not [n for n in os.listdir(os.path.dirname(f["pt"])) if n.endswith(".tmp")]

    rows = rows_of(f["jsonl"])
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    for r in rows:
        assert 0 <= r["val_clean"] <= 100 and 0 <= r["train_clean"] <= 100 and r["loss"] > 0
        assert ("val_adv" in r) == ("train_batch_pgd" in r) == ("train_adv" in r) == (adv != "nat")
    assert rows[0]["lr"] == lr  # no lr cut before the first epoch, even in a 1-epoch run

    ck = torch.load(f["pt"])  # torch.load's safe default (weights_only=True): anyone can load it
    assert (ck["arch"], ck["num_classes"], ck["dataset"]) == (arch, num_classes, dataset)
    assert ck["adv"] == adv and ck["args"]["epochs"] == epochs and ck["rows"] == rows
    assert ck["n_train"] + ck["n_val"] == ck["args"]["limit"] and ck["collapse"] is None
    assert ck["role"] == ("blackbox" if arch == "densenet121" else "transfer" if "src" in ck else
                          "source" if dataset == "cifar100" else "baseline")
    assert "device" not in ck["args"]  # the device is not part of what the run means
    model = c.build_model(arch, num_classes, ck.get("growth", 12))
    model.load_state_dict(ck["model"])  # strict: a complete state dict of the unwrapped module
    assert model.linear.out_features == num_classes

    last = torch.load(f["last"])
    assert last["epoch"] == epochs and last["rows"] == rows and last["args"] == ck["args"]
    assert {"optimizer", "best", "model"} <= set(last)

    with open(f["json"]) as fh:
        summary = json.load(fh)
    assert summary["eps"] == 8 / 256 and summary["eps_paper_scale"] == 0.0625
    assert (summary["dataset"], summary["adv"], summary["arch"]) == (dataset, adv, arch)
    assert summary["best_epoch"] == ck["epoch"] and summary["best_val"] == ck["metrics"]
    assert ck["metrics"] == rows[ck["epoch"] - 1] and summary["last"] == rows[-1]
    assert summary["torch"] == torch.__version__ and summary["device"] == "cpu"

    # the logged validation accuracy is that of the saved weights on the validation split
    a = ck["args"]
    _, (xva, yva) = c.load_data(dataset, a["data_dir"], a["limit"])
    model.eval()
    assert engine.accuracy(model, xva, yva) == ck["metrics"]["val_clean"]
    if adv == "fgsm" and a["label_fix"]:  # validated with the attack it trains on: FGSM on its own predictions
        xf = xva.float() / 255
        right = (c.predict(model, c.fgsm(model, xf, c.predict(model, xf), a["eps"] / 256)) == yva).sum().item()
        assert 100 * right / len(yva) == ck["metrics"]["val_adv"]
        assert ck["metrics"]["val_attack"] == "fgsm(pred. labels)"
    elif adv != "nat":
        val_adv = engine.accuracy(model, xva, yva, kind=adv, eps=a["eps"] / 256, steps=a["steps"])
        assert val_adv == ck["metrics"]["val_adv"]
    return ck, last


def state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------------
# One tiny epoch of every script

def test_source_cifar100_nat(tiny_source):
    check_outputs(tiny_source, epochs=1, dataset="cifar100", adv="nat", arch="resnet8", num_classes=100)


def test_baseline_cifar10_fgsm(tiny_baseline):
    ck, _ = check_outputs(tiny_baseline, epochs=1, dataset="cifar10", adv="fgsm", arch="resnet8", num_classes=10)
    assert ck["args"]["label_fix"] is True and ck["args"]["wd"] == 1e-5  # the authors' adversarial default


def test_baseline_cifar10_pgd_two_epochs(tmp_path, tiny, monkeypatch):
    # every accuracy() call gets uint8 data: it scales by 1/255 itself (a float batch would be scaled twice)
    real, calls = engine.accuracy, []

    def checked(model, x, y, *args, **kw):
        assert x.dtype == torch.uint8
        calls.append(kw.get("kind"))
        return real(model, x, y, *args, **kw)

    monkeypatch.setattr(engine, "accuracy", checked)
    out = tmp_path / "cifar10_pgd.pt"
    train_source.main(["--dataset", "cifar10", "--adv", "pgd", "--steps", "1", "--out", str(out), *tiny(),
                       "--epochs", "2"])
    assert calls == [None, "pgd", "pgd"] * 2  # clean val, pgd val, pgd train-batch monitor per epoch
    monkeypatch.undo()
    ck, last = check_outputs(out, epochs=2, dataset="cifar10", adv="pgd", arch="resnet8", num_classes=10)
    rows = last["rows"]
    assert rows[1]["lr"] == pytest.approx(0.01)  # x0.1 at half of --epochs
    # the train-batch monitor is PGD accuracy of the epoch's weights on the first 256 training images
    (xtr, ytr), _ = c.load_data("cifar10", "synthetic", 40)
    model = c.model_from_checkpoint(last)
    assert engine.accuracy(model, xtr[:256], ytr[:256], kind="pgd", eps=8 / 256, steps=1) == rows[-1]["train_batch_pgd"]
    if ck["epoch"] == 2:
        assert state_equal(ck["model"], last["model"])


def test_blackbox_densenet(tiny_densenet):
    ck, _ = check_outputs(tiny_densenet, epochs=1, dataset="cifar10", adv="nat", arch="densenet121", num_classes=10)
    assert ck["growth"] == 4
    model = c.model_from_checkpoint(ck)
    assert len(c.weight_layers(model)) == 121


@pytest.mark.parametrize("unfreeze, tgt, freeze_bn", [(1, "nat", False), (1, "nat", True), (12, "nat", False),
                                                      (56, "nat", False), (12, "fgsm", False)])
def test_transfer(tmp_path, tiny, tiny_source, unfreeze, tgt, freeze_bn):
    out = tmp_path / f"nat-{tgt}-{unfreeze}.pt"
    transfer.main(["--src", "nat", "--tgt", tgt, "--unfreeze", str(unfreeze), "--init", str(tiny_source),
                   "--out", str(out), "--steps", "1", *tiny(), *(["--freeze-bn"] if freeze_bn else [])])
    ck, last = check_outputs(out, epochs=1, dataset="cifar10", adv=tgt, arch="resnet8", num_classes=10)
    assert (ck["src"], ck["unfreeze"]) == ("nat", unfreeze) and ck["args"]["init"] == str(tiny_source)

    src = torch.load(tiny_source, map_location="cpu", weights_only=False)["model"]
    dst = ck["model"]
    assert dst["linear.weight"].shape == (10, 64) and src["linear.weight"].shape == (100, 64)
    model = c.build_model("resnet8", 10)
    trainable = {n for n, _ in model.named_parameters() if {1: n.startswith("linear."),
                                                            12: n.startswith(("layer3.", "linear.")),
                                                            56: True}[unfreeze]}
    # the optimiser holds exactly the trainable parameters
    assert sum(len(g["params"]) for g in last["optimizer"]["param_groups"]) == len(trainable)
    params = dict(model.named_parameters())
    for n in src:
        if n.startswith("linear."):
            continue
        if n in params:
            assert torch.equal(dst[n], src[n]) == (n not in trainable), n
        elif unfreeze == 56 or (unfreeze == 12 and n.startswith("layer3.")):
            assert not torch.equal(dst[n], src[n]), n  # trainable layers' BatchNorm statistics adapt
        else:  # frozen BatchNorm statistics: adapt as the authors' runs did, fixed with --freeze-bn
            assert torch.equal(dst[n], src[n]) == freeze_bn, n


@pytest.mark.parametrize("adv, clean, adv_acc, best", [
    ("nat", [50.0, 80.0, 60.0], None, 2),
    # the mean of clean and adversarial picks epoch 2 (clean alone would pick 3, adversarial alone 1)
    ("fgsm", [10.0, 60.0, 90.0], [40.0, 40.0, 0.0], 2),
])
def test_final_checkpoint_is_the_best_validation_epoch(tmp_path, tiny, monkeypatch, adv, clean, adv_acc, best):
    real, epoch = engine.accuracy, {"clean": 0, "adv": 0}

    def scripted(model, x, y, *args, kind=None, **kw):  # validation scores chosen by the test
        real(model, x, y, *args, kind=kind, **kw)
        if kind is None:
            epoch["clean"] += 1
            return clean[epoch["clean"] - 1]
        if kind == adv:
            epoch["adv"] += 1
            return adv_acc[epoch["adv"] - 1]
        return 0.0  # the train-batch PGD monitor takes no part in model selection

    monkeypatch.setattr(engine, "accuracy", scripted)
    # --no-label-fix: FGSM validation then goes through accuracy(), which this test scripts (with the fix it crafts
    # on the model's own predictions, as its training does: check_outputs checks that value)
    fix = ["--no-label-fix"] if adv == "fgsm" else []
    run = lambda d, n: train_source.main(["--dataset", "cifar10", "--adv", adv, "--steps", "1", "--milestones",  # noqa
                                          "--out", str(tmp_path / d / "x.pt"), *tiny(), "--epochs", str(n), *fix])
    run("three", 3)
    ck = torch.load(tmp_path / "three" / "x.pt", weights_only=False)
    with open(tmp_path / "three" / "x.json") as f:
        assert ck["epoch"] == json.load(f)["best_epoch"] == best
    assert ck["metrics"]["val_clean"] == clean[best - 1]
    if adv == "nat":
        # the saved weights are those after epoch `best`: without an lr schedule a run of `best` epochs ends there
        epoch.update(clean=0, adv=0)
        run("short", best)
        short = torch.load(tmp_path / "short" / "x.last.pt", weights_only=False)
        assert state_equal(ck["model"], short["model"])
        last = torch.load(tmp_path / "three" / "x.last.pt", weights_only=False)
        assert not state_equal(ck["model"], last["model"])


# ----------------------------------------------------------------------------------------------------------
# Resume

def strip_timing(x):
    if isinstance(x, dict):
        return {k: strip_timing(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, (list, tuple)):
        return [strip_timing(v) for v in x]
    return x


def assert_identical(a, b, where="checkpoint", ignore=TIMING | {"out"}):
    """Bitwise equality of nested checkpoints, timing fields (and the runs' own --out) aside."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        ka, kb = set(a) - ignore, set(b) - ignore
        assert ka == kb, where
        for k in ka:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


class Crash(Exception):
    pass


def crash_after_epoch(monkeypatch, epoch):
    """Make the training die right after writing its resume state for `epoch` (a kill at the worst moment)."""
    real = engine.atomic_save

    def save(obj, path):
        real(obj, path)
        if path.endswith(".last.pt") and obj["epoch"] == epoch:
            raise Crash
    monkeypatch.setattr(engine, "atomic_save", save)


def load(p):
    return torch.load(p, weights_only=False)


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, tiny, monkeypatch, capsys):
    # PGD with a random start draws from the global RNG, and the lr drops after epoch 2: resume must restore
    # the weights, the optimiser's momentum, the schedule and the random streams to be exact.
    args = lambda d: ["--dataset", "cifar10", "--adv", "pgd", "--steps", "1", "--random-start", "--milestones", "0.5",
                      *tiny(), "--epochs", "3", "--out", str(tmp_path / d / "run.pt")]  # noqa: E731
    train_source.main(args("A"))

    real = engine.atomic_save

    def crash_after_epoch_2(obj, path):
        real(obj, path)
        if path.endswith(".last.pt") and obj["epoch"] == 2:
            raise Crash  # killed right after the epoch-2 checkpoint, before its log line

    monkeypatch.setattr(engine, "atomic_save", crash_after_epoch_2)
    with pytest.raises(Crash):
        train_source.main(args("B"))
    monkeypatch.undo()
    b = outputs(tmp_path / "B" / "run.pt")
    assert not os.path.exists(b["pt"]) and not os.path.exists(b["json"])  # nothing that looks finished
    assert len(rows_of(b["jsonl"])) == 1
    capsys.readouterr()

    train_source.main(args("B"))
    printed = capsys.readouterr().out
    assert "resuming" in printed and "after epoch 2/3" in printed
    assert "epoch   3/3" in printed and "epoch   1/3" not in printed and "epoch   2/3" not in printed

    with open(tmp_path / "B" / "run.log") as f:  # the resumed run appended to the log of the first
        log = [line.rstrip().split(" |")[0] for line in f if line.startswith(("epoch", "resuming"))]
    assert log == ["epoch   1/3", "resuming " + str(tmp_path / "B" / "run.pt") + " after epoch 2/3", "epoch   3/3"]
    a = outputs(tmp_path / "A" / "run.pt")
    load = lambda p: torch.load(p, map_location="cpu", weights_only=False)  # noqa: E731
    assert_identical(load(a["last"]), load(b["last"]), "last")
    assert_identical(load(a["pt"]), load(b["pt"]), "final")
    assert strip_timing(rows_of(a["jsonl"])) == strip_timing(rows_of(b["jsonl"]))
    assert [r["lr"] for r in rows_of(b["jsonl"])] == [0.1, 0.1, pytest.approx(0.01)]
    with open(a["json"]) as fa, open(b["json"]) as fb:
        ja, jb = json.load(fa), json.load(fb)
    assert ja["args"].pop("out") != jb["args"].pop("out")
    assert strip_timing(ja) == strip_timing(jb)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full (every write: ENOSPC)")
def test_full_disk_during_a_checkpoint_write_keeps_the_last_good_state(tmp_path, tiny, monkeypatch, capsys):
    """The disk fills while epoch 2's resume state is written: one line, exit 2, no X.last.pt.tmp left, epoch 1's
    X.last.pt intact; the same command, once there is space, resumes from it."""
    out = tmp_path / "run.pt"
    last = str(tmp_path / "run.last.pt")
    args = ["--dataset", "cifar10", *tiny(), "--epochs", "2", "--out", str(out)]
    real = engine.atomic_save

    def disk_full_at_epoch_2(obj, path):
        if path == last and obj["epoch"] == 2:
            os.symlink("/dev/full", path + ".tmp")  # torch.save's real writes fail from here (ENOSPC)
        real(obj, path)
    monkeypatch.setattr(engine, "atomic_save", disk_full_at_epoch_2)
    with pytest.raises(SystemExit) as e:
        engine.run_main(lambda: train_source.main(args))
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: could not write {last} (torch.save failed") and "free some space" in err[0]
    assert not os.path.lexists(last + ".tmp") and not out.exists()
    assert load(last)["epoch"] == 1
    monkeypatch.undo()
    train_source.main(args)
    assert "resuming" in capsys.readouterr().out and load(last)["epoch"] == 2 and out.exists()


def snapshot(directory):
    """Every file under directory with its bytes and modification time (not the runs' lock files)."""
    snap = {}
    for root, _, files in os.walk(directory):
        for n in files:
            if n.endswith(".lock"):
                continue
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                snap[p] = (f.read(), os.stat(p).st_mtime_ns)
    return snap


def check_one_line_error(r, argparse_error=False):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.splitlines()
    if argparse_error:  # argparse prints its usage first, then the error
        assert lines and "error:" in lines[-1], r.stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[-1]


def test_resume_with_other_arguments_is_refused(tmp_path, tiny, run_script):
    out = tmp_path / "run" / "x.pt"
    train_source.main(["--dataset", "cifar10", "--out", str(out), *tiny()])
    before = snapshot(tmp_path)
    r = run_script("train_source.py", ["--dataset", "cifar10", "--out", out, *tiny(), "--lr", "0.05"], tmp_path)
    msg = check_one_line_error(r)  # a finished output is not replaced by a run of other arguments
    assert "x.pt exists" in msg and "--lr 0.1 -> 0.05" in msg and "--force" in msg
    assert snapshot(tmp_path) == before
    os.remove(out)  # now an unfinished run: its resume state refuses other arguments too
    before = snapshot(tmp_path)
    r = run_script("train_source.py", ["--dataset", "cifar10", "--out", out, *tiny(), "--lr", "0.05"], tmp_path)
    msg = check_one_line_error(r)
    assert "x.last.pt" in msg and "--lr 0.1 -> 0.05" in msg
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------------------
# Bad input: exit status 2, one line, nothing written

def bad_npz(directory, case):
    import numpy as np
    directory.mkdir()
    x = np.zeros((40, 32, 32, 3), np.uint8)
    y = np.arange(40) % 10
    if case == "shape":
        x = np.zeros((40, 3, 32, 32), np.uint8)
    elif case == "dtype":
        x = x.astype(np.float32)
    elif case == "labels":
        y = np.arange(40)
    np.savez(directory / "cifar10_train.npz", x=x, y=y)
    return directory / "cifar10_train.npz"


SRC = ["--src", "nat", "--tgt", "nat", "--unfreeze", "1"]
BAD = {  # name: (script, arguments; INIT/DATA are filled in by the test, argparse's own error)
    "unknown --adv": ("train_source.py", ["--adv", "free"], True),
    "unknown --src": ("transfer.py", ["--src", "free", "--tgt", "nat", "--unfreeze", "1", "--init", "INIT"], True),
    "unknown --tgt": ("transfer.py", ["--src", "nat", "--tgt", "free", "--unfreeze", "1", "--init", "INIT"], True),
    "--unfreeze 7": ("transfer.py", ["--src", "nat", "--tgt", "nat", "--unfreeze", "7", "--init", "INIT"], False),
    "missing --init": ("transfer.py", SRC + ["--init", "MISSING"], False),
    "corrupt --init": ("transfer.py", SRC + ["--init", "GARBAGE"], False),
    "--init a cifar10 baseline": ("transfer.py", ["--src", "fgsm", "--tgt", "nat", "--unfreeze", "1",
                                                  "--init", "BASELINE"], False),
    "--init a densenet": ("transfer.py", SRC + ["--init", "DENSENET"], False),
    "--init of another --adv": ("transfer.py", ["--src", "pgd", "--tgt", "nat", "--unfreeze", "1",
                                                "--init", "INIT"], False),
    "--arch other than the source's": ("transfer.py", SRC + ["--init", "INIT", "--arch", "resnet20"], False),
    "empty --data-dir, no network": ("train_source.py", ["--dataset", "cifar10", "--data-dir", "EMPTY"], False),
    "npz of wrong shape": ("train_source.py", ["--dataset", "cifar10", "--data-dir", "NPZ:shape"], False),
    "npz of wrong dtype": ("train_source.py", ["--dataset", "cifar10", "--data-dir", "NPZ:dtype"], False),
    "npz labels out of range": ("train_source.py", ["--dataset", "cifar10", "--data-dir", "NPZ:labels"], False),
    "negative --eps": ("train_source.py", ["--eps", "-8"], False),
    "negative --eps, transfer": ("transfer.py", SRC + ["--init", "INIT", "--eps", "-8"], False),
    "--limit too small": ("train_source.py", ["--limit", "5"], False),
    "--growth 0": ("train_blackbox.py", ["--growth", "0", "--epochs", "1", "--limit", "20"], False),
    "--out under a file": ("train_source.py", ["--out", "UNDERFILE"], False),
    "--out where nothing can be written": ("train_source.py", ["--out", "/proc/no/x.pt"], False),
    "one --out for two seeds": ("train_source.py", ["--seed", "0", "1"], False),
    "a seed twice": ("train_source.py", ["--seed", "1", "1", "--out", "TEMPLATE"], False),
    "--out template with an unknown field": ("transfer.py", SRC + ["--init", "INIT", "--out", "x_{epoch}.pt"], False),
    "--init a resume state": ("transfer.py", SRC + ["--init", "INITLAST"], False),
    "--init whose weights do not fit its arch": ("transfer.py", SRC + ["--init", "WRONGARCH"], False),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, tmp_path, tiny, run_script, request):
    script, args, argparse_error = BAD[case]
    args = list(args)  # BAD's lists stay untouched
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    work = tmp_path / "work"  # the command's cwd and output folder: must stay empty
    work.mkdir()
    named = {}
    for i, v in enumerate(args):
        if v == "INIT":
            args[i] = request.getfixturevalue("tiny_source")
        elif v == "BASELINE":
            args[i] = request.getfixturevalue("tiny_baseline")
        elif v == "DENSENET":
            args[i] = request.getfixturevalue("tiny_densenet")
        elif v == "MISSING":
            args[i] = inputs / "no_such_source.pt"
        elif v == "GARBAGE":
            args[i] = inputs / "garbage.pt"
            args[i].write_bytes(os.urandom(4096))
        elif v == "INITLAST":
            args[i] = str(request.getfixturevalue("tiny_source"))[:-3] + ".last.pt"
        elif v == "WRONGARCH":  # a source checkpoint whose recorded arch its weights do not fit
            ck = torch.load(request.getfixturevalue("tiny_source"))
            args[i] = inputs / "wrong_arch.pt"
            torch.save({**ck, "arch": "resnet20"}, args[i])
        elif v == "UNDERFILE":
            (inputs / "a_file").write_text("not a folder")
            args[i] = inputs / "a_file" / "x.pt"
        elif v == "TEMPLATE":
            args[i] = work / "out" / "x_s{seed}.pt"
        elif v == "EMPTY":
            args[i] = inputs / "empty"
            args[i].mkdir()
        elif v.startswith("NPZ:"):
            args[i] = inputs / "npz"
            named["npz"] = bad_npz(args[i], v[4:])
    base = tiny() if script != "train_blackbox.py" else ["--data-dir", "synthetic", "--device", "cpu"]
    if "--data-dir" in args:  # the case's data dir wins: drop the default
        i = base.index("--data-dir")
        del base[i:i + 2]
    before = snapshot(inputs)
    out = [] if "--out" in args else ["--out", work / "out" / "x.pt"]
    r = run_script(script, [*base, *args, *out], work, timeout=60)
    line = check_one_line_error(r, argparse_error)
    assert not os.listdir(work), os.listdir(work)
    assert snapshot(inputs) == before  # nothing downloaded, created or touched among the inputs either
    if "npz" in named:
        assert str(named["npz"]) in line
    if case == "empty --data-dir, no network":
        assert "cifar10" in line and "synthetic" in line  # says what is missing and how to go on offline
    if case == "missing --init":
        assert "--init" in line and "no_such_source.pt" in line
    if case == "corrupt --init":  # not the project's file: no advice to delete it
        assert "--init" in line and "garbage.pt" in line and "delete" not in line
    if case == "--init a resume state":
        assert "resume state" in line and "cifar100_nat.pt" in line
    if case == "--init whose weights do not fit its arch":
        assert "wrong_arch.pt" in line and "resnet20" in line

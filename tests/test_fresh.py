"""Nothing stale, nothing silent: each case a new user met (a fresh clone, the README, the ad-hoc commands, bad
input) as a command, with the behaviour it must have: one line and exit 2 before any work, nothing lost or
overwritten, a diverged run stopped, a stale result refused, lines a person can follow. The Makefile's cases are
in test_make.py."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import common as c
import engine
import evaluate
import report
import train_source
from test_report import full_run, write_eval
from test_scripts import check_one_line_error, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYN = ["--data-dir", "synthetic", "--device", "cpu"]


def files(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


# ----------------------------------------------------------------------------------------------------------
# Training

def test_a_diverged_run_stops_keeps_its_last_good_state_and_writes_no_model(tmp_path, tiny, run_script):
    """The issue's command (lr 1e8): it used to print 'loss nan' every epoch, then write X.pt with NaN weights."""
    out = tmp_path / "bad" / "nan2.pt"
    r = run_script("train_source.py", ["--dataset", "cifar10", "--adv", "nat", "--arch", "resnet8", "--data-dir",
                                       "synthetic", "--limit", "400", "--batch-size", "20", "--epochs", "3", "--lr",
                                       "1e8", "--device", "cpu", "--out", out], tmp_path)
    line = check_one_line_error(r)
    assert re.search(r"diverged .* at epoch 1 step \d+, learning rate 1e\+08", line) and "--lr" in line, line
    assert not out.exists() and not (tmp_path / "bad" / "nan2.json").exists()
    assert "stopped:" in r.stdout and "val clean" not in r.stdout  # no epoch line for a diverged epoch


def test_divergence_after_a_good_epoch_keeps_that_epoch_to_resume(tmp_path, tiny, monkeypatch, capsys):
    """Weights made non-finite in epoch 2: the resume state stays that of epoch 1, the member's log says where,
    and in a cohort the other member still finishes."""
    real = c.train_step

    def poison(model, opt, x, y, *a, **kw):
        out = real(model, opt, x, y, *a, **kw)
        if poison.epoch == 2 and model is poison.victim:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return out
    poison.epoch, poison.victim = 0, None
    real_lr = engine.set_lr

    def count_epochs(opt, lr):
        poison.epoch += opt is poison.opt
        return real_lr(opt, lr)
    real_make = engine.make_step

    def mk(models, opts, *a, **kw):
        poison.victim, poison.opt = models[0], opts[0]
        return real_make(models, opts, *a, **kw)
    monkeypatch.setattr(c, "train_step", poison)
    monkeypatch.setattr(engine, "set_lr", count_epochs)
    monkeypatch.setattr(engine, "make_step", mk)
    with pytest.raises(c.UsageError, match=r"s0.pt: the training diverged .* at epoch 2 step 2, .*keeps epoch 1"):
        train_source.main(["--dataset", "cifar10", "--seed", "0", "1", "--out", str(tmp_path / "m_s{seed}.pt"),
                           *tiny(), "--epochs", "3"])
    assert torch.load(tmp_path / "m_s0.last.pt", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "m_s0.pt").exists() and (tmp_path / "m_s1.pt").exists()  # the other member finished
    assert "stopped:" in (tmp_path / "m_s0.log").read_text()


def test_swapped_datasets_are_refused(tmp_path, tiny, run_script):
    """CIFAR-10 saved as cifar100_train.npz: labels in range, but only 10 of 100 classes."""
    x, y = c.synthetic("cifar10", True, 2000)
    d = tmp_path / "data"
    d.mkdir()
    np.savez(d / "cifar100_train.npz", x=x.permute(0, 2, 3, 1).numpy(), y=y.numpy())
    args = [str(d) if a == "synthetic" else a for a in tiny()]
    r = run_script("train_source.py", ["--dataset", "cifar100", *args, "--out", tmp_path / "o" / "x.pt"], tmp_path)
    line = check_one_line_error(r)
    assert "cifar100_train.npz" in line and "only 10 of the 100 classes" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case, args, says", [
    ("milestones in epochs", ["--milestones", "100", "150"], "milestones are fractions of --epochs in (0, 1]"),
    ("unknown device", ["--device", "foo"], "--device 'foo' is not a device"),
    ("negative seed", ["--seed", "-1"], "--seed must be non-negative"),
    ("lr not finite", ["--lr", "inf"], "--lr positive"),
])
def test_training_input_is_checked_before_any_work(case, args, says, tmp_path, tiny, run_script):
    r = run_script("train_source.py", ["--dataset", "cifar10", *tiny(), *args, "--out", tmp_path / "o" / "x.pt"],
                   tmp_path)
    assert says in check_one_line_error(r) and not (tmp_path / "o").exists()


def test_progress_inside_an_epoch_and_time_left_from_steps_only(tmp_path, tiny, monkeypatch, capsys):
    """A progress line (step, images/s, time left in the epoch) when PROGRESS_S has passed, named by the model;
    the epoch line's time left does not count the start-up (4 s of slow data loading here)."""
    import time
    real = c.load_data
    monkeypatch.setattr(c, "load_data", lambda *a, **kw: (time.sleep(4), real(*a, **kw))[1])
    monkeypatch.setattr(engine, "PROGRESS_S", 0)
    train_source.main(["--dataset", "cifar10", "--out", str(tmp_path / "m.pt"), *tiny(), "--epochs", "2",
                       "--batch-size", "10"])  # 38 images: 4 steps an epoch
    out = capsys.readouterr().out.splitlines()
    assert all(line.startswith("[m] ") for line in out), out  # every line names its model (make -j)
    steps = [line for line in out if " step " in line]
    assert [line.split(" step ")[1].split(" |")[0] for line in steps] == ["2/4", "3/4"] * 2  # not the last
    assert all(re.search(r"epoch [12]/2 step \d/4 \| [\d,]+ img/s \| epoch left \d+m\d\ds$", s) for s in steps)
    first = next(line for line in out if "epoch   1/2" in line)
    took, left = (int(m) * 60 + int(s) for m, s in re.findall(r"(\d+)m(\d\d)s", first)[-2:])
    assert left <= took + 2, first  # the epoch (and its validation) to come; 4 s of start-up would add 4


def test_cpu_warning_and_interrupt_message_of_a_training(tmp_path, monkeypatch, capsys):
    """The protocol's size on a CPU warns before the first step; Ctrl-C says what was kept and how to go on."""
    big = torch.zeros(50_000, 3, 32, 32, dtype=torch.uint8), torch.arange(50_000) % 10
    monkeypatch.setattr(c, "load_split", lambda *a, **kw: big)

    def interrupt(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "make_step", interrupt)
    with pytest.raises(SystemExit) as e:
        engine.run_main(lambda: train_source.main(["--dataset", "cifar10", "--arch", "resnet8", "--device", "cpu",
                                              "--out", str(tmp_path / "m.pt")]))
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and err[0].startswith("warning: 47,500 images x 200 epochs on the CPU take days")
    assert err[1] == ("error: interrupted; run the same command again to resume from the last completed epoch "
                      "(X.last.pt beside each output)")


# ----------------------------------------------------------------------------------------------------------
# Evaluation

@pytest.fixture(scope="module")
def model_and_examples(tmp_path_factory, tiny_baseline, tiny_densenet):
    d = tmp_path_factory.mktemp("ev")
    ex = d / "examples.pt"
    evaluate.main(["--craft-from", str(tiny_densenet), "--out", str(ex), "--limit", "20", *SYN])
    return tiny_baseline, ex


def test_crafting_onto_an_existing_examples_file_with_other_inputs_is_refused(model_and_examples, tiny_densenet,
                                                                              tmp_path, run_script):
    _, ex = model_and_examples
    before = snapshot(os.path.dirname(ex))
    r = run_script("evaluate.py", ["--craft-from", tiny_densenet, "--out", ex, "--limit", "10", *SYN], tmp_path)
    line = check_one_line_error(r)
    assert "made from other inputs (--limit 20 -> 10)" in line and "--force" in line
    assert snapshot(os.path.dirname(ex)) == before
    r = run_script("evaluate.py", ["--craft-from", tiny_densenet, "--out", ex, "--limit", "20", *SYN], tmp_path)
    assert r.returncode == 0 and "nothing to do" in r.stdout and snapshot(os.path.dirname(ex)) == before


def test_an_evaluation_of_another_checkpoint_is_refused(model_and_examples, tiny_source, tmp_path, run_script):
    """The stale case: an existing --out, another --ckpt: it used to say 'nothing to do' and keep the old numbers."""
    ckpt, ex = model_and_examples
    out = tmp_path / "m.eval.json"
    E = ["--no-strong", "--no-curve", "--limit", "20", *SYN]
    assert run_script("evaluate.py", ["--ckpt", ckpt, "--blackbox", ex, "--out", out, *E], tmp_path).returncode == 0
    other = tmp_path / "other.pt"
    ck = torch.load(ckpt, weights_only=False)
    ck["model"] = {k: v * 2 if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, other)
    before = out.read_bytes()
    r = run_script("evaluate.py", ["--ckpt", other, "--blackbox", ex, "--out", out, *E], tmp_path)
    assert "--ckpt (other weights)" in check_one_line_error(r) and out.read_bytes() == before
    rec = json.loads(before)["inputs"]
    assert rec["ckpt"] == evaluate.sha256(str(ckpt)) and rec["blackbox"] == evaluate.sha256(str(ex))
    assert (rec["eps"], rec["steps"], rec["limit"], rec["data_dir"]) == (8, 7, 20, "synthetic")


def test_an_evaluation_from_before_a_column_was_added_is_not_taken_as_finished(model_and_examples, tmp_path,
                                                                             monkeypatch, capsys):
    """A column registered in common.COLUMNS after an evaluation ran: the rerun names the new column instead of
    saying 'nothing to do' over a file that lacks it; without the column the same rerun has nothing to do."""
    ckpt, ex = model_and_examples
    out = tmp_path / "m.eval.json"
    args = ["--ckpt", str(ckpt), "--blackbox", str(ex), "--out", str(out), "--no-strong", "--no-curve", "--limit",
            "20", *SYN]
    evaluate.main(args)
    before = out.read_bytes()
    evaluate.main(args)
    assert "nothing to do" in capsys.readouterr().out
    toy = c.COLUMNS["wb_fgsm"]._replace(head="WB-toy", paper=False)
    monkeypatch.setitem(c.COLUMNS, "wb_toy", toy)
    with pytest.raises(c.UsageError, match=r"made from other inputs \(--columns .* -> .*'wb_toy'"):
        evaluate.main(args)
    assert out.read_bytes() == before


@pytest.mark.parametrize("case, args, says", [
    ("a resume state", ["--ckpt", "LAST"], "is a resume state, not a trained model"),
    ("non-finite weights", ["--ckpt", "NAN"], "holds weights that are not finite"),
    ("--batch-size 0", ["--ckpt", "CKPT", "--batch-size", "0"], "--batch-size"),
    ("--curve-eps -4 8", ["--ckpt", "CKPT", "--curve-eps", "-4", "8"], "--curve-eps -4 8: each eps must be"),
    ("--device foo", ["--ckpt", "CKPT", "--device", "foo"], "--device 'foo' is not a device"),
])
def test_evaluation_input_is_checked_before_any_work(case, args, says, tmp_path, tiny_baseline, run_script):
    """Each used to run (or run the main attacks for hours) before failing, or to end in a traceback."""
    args = list(args)
    ck = torch.load(tiny_baseline, weights_only=False)
    if "NAN" in args:
        ck["model"] = {k: v * float("nan") if v.is_floating_point() else v for k, v in ck["model"].items()}
        torch.save(ck, tmp_path / "nan.pt")
    subst = {"LAST": str(tiny_baseline)[:-3] + ".last.pt", "NAN": tmp_path / "nan.pt", "CKPT": tiny_baseline}
    args = [subst.get(x, x) for x in args]
    r = run_script("evaluate.py", [*args, "--out", tmp_path / "o" / "x.eval.json", "--data-dir", "synthetic",
                                   *(["--device", "cpu"] if "--device" not in args else [])], tmp_path)
    assert says in check_one_line_error(r) and not (tmp_path / "o").exists()


def test_evaluation_lines_are_named_and_an_interrupt_says_nothing_was_written(model_and_examples, tmp_path,
                                                                             monkeypatch, capsys):
    ckpt, ex = model_and_examples
    monkeypatch.setattr(evaluate, "PROGRESS_S", 0)
    evaluate.main(["--ckpt", str(ckpt), "--blackbox", str(ex), "--out", str(tmp_path / "a.eval.json"),
                   "--limit", "20", "--batch-size", "10", "--no-strong", "--curve-eps", "0", "8", *SYN])
    out = capsys.readouterr().out.splitlines()
    assert len(out) > 4 and all(line.startswith("[a.eval.json] ") for line in out), out
    monkeypatch.setattr(evaluate, "evaluate", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit):
        engine.run_main(lambda: evaluate.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "b.eval.json"), *SYN]),
                   evaluate.INTERRUPTED)
    assert "nothing was written" in capsys.readouterr().err and not (tmp_path / "b.eval.json").exists()


# ----------------------------------------------------------------------------------------------------------
# Report

def test_the_report_keeps_a_users_own_files(tmp_path):
    full_run(tmp_path)
    out = tmp_path / "report"
    out.mkdir()
    (out / "mynotes.md").write_text("mine")
    (out / "fig9.png").write_bytes(b"an earlier report's figure, not drawn now")
    (out / "report.md").write_text("an earlier report")
    report.main(["--run", str(tmp_path), "--out", str(out)])
    assert (out / "mynotes.md").read_text() == "mine" and not (out / "fig9.png").exists()
    assert (out / "report.md").read_text().startswith("# Reproduction report")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("x")
    with pytest.raises(c.UsageError, match="not an earlier report"):
        report.main(["--run", str(tmp_path), "--out", str(tmp_path / "notes")])


def test_a_departing_run_says_so_in_every_file_and_figure(tmp_path, monkeypatch):
    """claims.md read alone, and every figure's title, carry the banner; table1.csv leaves missing cells empty;
    fig4's caption says what it shows; legends render R_{src→tgt}; the 9 curves of a target facet by source."""
    full_run(tmp_path, skip=("nat-pgd-1",))
    for k in ("pgd-nat-12", "fgsm"):  # synthetic data: not the paper's protocol
        write_eval(tmp_path, k, {"clean": 50.0, "bb_fgsm": 40.0, "bb_pgd": 40.0, "wb_fgsm": 20.0, "wb_pgd": 10.0},
                   train={"data_dir": "synthetic"})
    titles, labels, grids = [], [], []
    real_sup, real_plot, real_sub = report.suptitle, report.plt.Axes.plot, report.plt.subplots
    monkeypatch.setattr(report, "suptitle", lambda fig, t, n: (titles.append((t, n)), real_sup(fig, t, n)))
    monkeypatch.setattr(report.plt.Axes, "plot", lambda ax, *a, **kw: (labels.append(kw.get("label")),
                                                                       real_plot(ax, *a, **kw))[1])
    monkeypatch.setattr(report.plt, "subplots", lambda *a, **kw: (grids.append(a[:2]), real_sub(*a, **kw))[1])
    report.main(["--run", str(tmp_path)])
    out = tmp_path / "report"
    claims = (out / "claims.md").read_text()
    assert "**Not the paper's protocol**" in claims.split("\n## ")[0]
    assert len(titles) == len([f for f in os.listdir(out) if f.endswith(".png")]) == 9
    assert all(n.startswith("NOT THE PAPER'S PROTOCOL (data") for _, n in titles)
    fig4 = next(t for t, _ in titles if t.startswith("Figure 4"))
    assert "24 rows of the paper's Table 1" in fig4 and "table1.md" in (out / "report.md").read_text()
    row = next(line for line in (out / "table1.csv").read_text().splitlines() if line.startswith("R_{nat->pgd} 1,"))
    assert "–" not in row and ",," in row
    assert r"$R_{pgd \rightarrow nat}$ 12" in labels and not [x for x in labels if x and "->" in x]
    assert (1, 3) in grids  # a target's 9 transfers: one panel per source


# ----------------------------------------------------------------------------------------------------------
# Help texts, the README, a checkpoint outside the repository

@pytest.mark.parametrize("script", ["train_source.py", "transfer.py", "train_blackbox.py", "evaluate.py"])
def test_help_shows_templates_and_numbers_as_they_are(script):
    h = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True).stdout
    assert "{{" not in h and "PROGRESS_S" not in h
    assert "every 10 seconds" in h if script == "evaluate.py" else "_s{seed}.pt" in h


def test_readme_ad_hoc_block_uses_the_venv_tiny_flags_and_its_own_folder():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split("## One cell, ad hoc")[1].split("```")[1]
    cmds = [line for line in block.splitlines() if line.startswith("$PY ")]
    assert "PY=.venv/bin/python" in block and "R=runs/adhoc" in block and len(cmds) == 8
    assert all("runs/paper" not in line and ("$T" in line or "$E" in line or "report.py" in line) for line in cmds)
    assert "--data-dir synthetic" in block and "--epochs 2" in block


def test_a_checkpoint_loads_outside_the_repository_as_the_readme_says(tmp_path, tiny_source):
    """The README's snippet, run from another folder with the repository put on the path."""
    snippet = open(os.path.join(ROOT, "README.md")).read().split("To use one elsewhere")[1].split("```python")[1]
    snippet = snippet.split("```")[0].replace("/path/to/this/repository", ROOT)
    snippet = snippet.replace("torch.load(path)", f"torch.load({str(tiny_source)!r})")
    r = subprocess.run([sys.executable, "-c", snippet + "\nprint(type(model).__name__)"], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0 and r.stdout.strip() == "ResNet", r.stderr

"""The workbench: common.py's tables of training objectives, evaluation columns and transfer strategies are the one
place their names are defined, and everything else follows them; the paper's own lists stay the paper's."""
import re

import common as c
import report


def test_the_papers_lists_are_the_papers():
    """A method beyond the paper never changes the paper's grid, Table 1's rows or columns, or Figures 2-5."""
    assert c.PAPER_ADV == ("nat", "fgsm", "pgd") and c.PAPER_UNF == (1, 12, 56)
    assert c.PAPER_COLS == ("clean", "bb_fgsm", "bb_pgd", "wb_fgsm", "wb_pgd")  # Table 1's order
    assert report.ADV == c.PAPER_ADV and report.COLS == c.PAPER_COLS and report.UNF == c.PAPER_UNF
    names = {n for k in report.ROWS for n in k.split("-")}
    assert names <= set(c.PAPER_ADV) | {str(u) for u in c.PAPER_UNF} and len(report.ROWS) == 30
    assert not set(report.EXTRA) & set(c.PAPER_COLS) and set(report.EXTRA) | set(c.PAPER_COLS) == set(c.COLUMNS)


def test_names_fit_make_and_file_names():
    """Make splits a transfer's stem on '-' and words on spaces; a named strategy must not look like a depth."""
    for name in [*c.OBJECTIVES, *c.STRATEGIES, *c.COLUMNS]:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
    assert not any(re.fullmatch(r"b\d+", s) for s in c.STRATEGIES)
    assert all(k.startswith("bb_") for k, col in c.COLUMNS.items() if col.box == "bb")  # their examples are x_X
    assert {col.box for col in c.COLUMNS.values()} <= {"clean", "wb", "bb", "worst"}


# ----------------------------------------------------------------------------------------------------------
# trades: TRADES (Zhang et al. 2019), added through common.OBJECTIVES alone

def test_trades_step_is_zhang_et_al():
    """By hand: KL inner maximisation, 7 steps of eps/4 from x + 0.001 N(0, 1) drawn from the generator, projected;
    loss CE(clean) + 6 KL(f(x) || f(x')), both forwarded in train mode. Pins the step to the bit (CPU, fp32)."""
    import copy

    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)
    model = c.build_model("resnet8", 10)
    x, y = c.synthetic("cifar10", True, 16)
    x = x.float() / 255
    ref = copy.deepcopy(model)
    eps = c.EPS
    ref.eval()
    with torch.no_grad():
        p = F.softmax(ref(x), 1)
    xa = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    for _ in range(7):
        xa = xa.detach().requires_grad_(True)
        g, = torch.autograd.grad(F.kl_div(F.log_softmax(ref(xa), 1), p, reduction="sum"), xa)
        xa = torch.min(torch.max(xa + eps / 4 * g.sign(), x - eps), x + eps).clamp(0, 1)
    ref.train()
    out, out_adv = ref(x), ref(xa.detach())
    want = F.cross_entropy(out, y) + 6 * F.kl_div(F.log_softmax(out_adv, 1), F.softmax(out, 1), reduction="batchmean")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, right, right_adv = c.train_step(model, opt, x, y, "trades", eps, 7, gen=torch.Generator().manual_seed(5))
    assert torch.equal(loss, want.detach())
    assert right == (out.argmax(1) == y).sum() and right_adv == (out_adv.argmax(1) == y).sum()
    o = c.OBJECTIVES["trades"]
    assert (o.validate, o.draws, o.paper) == ("pgd", True, False)  # validated by PGD; eager on CUDA; beyond the paper


def test_a_trades_training_validates_with_pgd(tmp_path, tiny):
    """The validation attack comes from the table, not from the training's name."""
    import json

    import train_source
    out = tmp_path / "t.pt"
    train_source.main(["--dataset", "cifar10", "--adv", "trades", "--steps", "1", "--out", str(out), *tiny()])
    row = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert row["val_attack"] == "pgd(true labels)" and row["val_adv"] is not None
    assert json.loads((tmp_path / "t.json").read_text())["adv"] == "trades"


# ----------------------------------------------------------------------------------------------------------
# wb_cw: white-box PGD on the Carlini-Wagner margin, added through common.COLUMNS alone

def test_cw_margin_is_positive_exactly_when_wrong():
    import torch
    z = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 0, 2])
    assert [c.cw_margin(z[i:i + 1], y[i:i + 1]).item() for i in range(3)] == [-2.0, 1.0, 0.0]
    assert c.cw_margin(z, y).item() == -1.0  # summed over the batch, as PGD ascends it


def test_wb_cw_attacks_within_the_budget():
    """20 steps of eps/4 inside the eps-ball and [0, 1]; never above clean accuracy on a trained-ish model."""
    import torch
    col = c.COLUMNS["wb_cw"]
    assert (col.head, col.box, col.paper, col.draws) == ("WB-CW", "wb", False, False)
    assert set(c.MASKING) <= set(col.voided_by)  # gradient masking voids it, as every white-box column
    torch.manual_seed(0)
    model = c.build_model("resnet8", 10)
    x, y = c.synthetic("cifar10", True, 32)
    x = x.float() / 255
    xa = col.attack(model, x, y, c.EPS, {"steps": 7})
    assert (xa - x).abs().max() <= c.EPS + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert (c.predict(model, xa) == y).sum() <= (c.predict(model, x) == y).sum()
    assert c.cw_margin(model.eval()(xa), y) > c.cw_margin(model(x), y)  # the margin it ascends went up


# ----------------------------------------------------------------------------------------------------------
# bn: a transfer that trains BatchNorm's affine parameters and the head, added through common.STRATEGIES alone

def test_bn_strategy_trains_batchnorm_and_the_head():
    import torch.nn as nn
    model = c.build_model("resnet56", 10)
    params = c.freeze(model, "bn")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    want = {id(p) for m in bns + [model.linear] for p in m.parameters()}
    assert {id(p) for p in params} == want and all(p.requires_grad == (id(p) in want) for p in model.parameters())
    assert sum(p.numel() for p in params) == 650 + 2 * sum(m.num_features for m in bns)
    assert c.parse_unfreeze("bn") == "bn" and c.describe_unfreeze("bn") == c.STRATEGIES["bn"].about


def test_a_bn_transfer_moves_only_batchnorm_and_the_head(tiny_source, tmp_path, tiny):
    """After a transfer with --unfreeze bn every conv weight is the source's, while BatchNorm's weights moved."""
    import torch
    import transfer
    out = tmp_path / "bn.pt"
    transfer.main(["--src", "nat", "--tgt", "nat", "--unfreeze", "bn", "--init", str(tiny_source), "--out", str(out),
                   *tiny()])
    src, got = c.load_checkpoint(str(tiny_source))["model"], c.load_checkpoint(str(out))
    assert got["unfreeze"] == "bn"
    conv = [k for k in src if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
    bn = [k for k in src if ".bn" in k and k.endswith(".weight")]
    assert conv and all(torch.equal(src[k], got["model"][k]) for k in conv)
    assert any(not torch.equal(src[k], got["model"][k]) for k in bn)


# ----------------------------------------------------------------------------------------------------------
# Per-stage flags in Make, and a transfer's departures include its source's

def test_stage_flags_reach_only_their_stage():
    """`make -n` of the grid: SRC_FLAGS on the three CIFAR-100 sources alone, BASE_FLAGS on the baselines alone,
    TL_FLAGS on the nine transfer cohorts alone; TRAIN_FLAGS on every training."""
    import subprocess
    from test_make import ROOT
    r = subprocess.run(["make", "-n", "--no-print-directory", "PY=python3", "CHECKED=1", "DATA=synthetic",
                        "TRAIN_FLAGS=--every", "SRC_FLAGS=--src-only", "BASE_FLAGS=--base-only", "TL_FLAGS=--tl-only",
                        "all"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cmds = r.stdout.replace("\\\n", " ").splitlines()
    stage = {"src": [x for x in cmds if "train_source.py --dataset cifar100" in x],
             "base": [x for x in cmds if "train_source.py --dataset cifar10 " in x],
             "tl": [x for x in cmds if "transfer.py" in x], "bb": [x for x in cmds if "train_blackbox.py" in x]}
    assert [len(v) for v in stage.values()] == [3, 3, 9, 1]
    for k, v in stage.items():
        for x in v:
            assert "--every" in x
            assert [f in x for f in ("--src-only", "--base-only", "--tl-only")] == [k == "src", k == "base", k == "tl"]
    assert not any(f in x for x in cmds if "evaluate.py" in x for f in ("--every", "-only"))


def test_a_transfer_lists_its_sources_departures():
    """A transfer of an eps-4 source (make SRC_FLAGS='--eps 4') says so, though its own training used eps 8."""
    train = {"arch": "resnet56", "epochs": 50, "batch_size": 100, "lr": 0.1, "wd": 5e-5, "milestones": [0.4, 0.8],
             "eps": 8, "steps": 7, "random_start": False, "freeze_bn": False, "n_train": 47_500, "n_val": 2_500,
             "data_dir": "data"}
    src = {**train, "epochs": 200, "wd": 1e-5, "milestones": [0.5, 0.75], "eps": 4}
    e = {"role": "transfer", "src": "pgd", "tgt": "pgd", "unfreeze": 12, "_table": "c10", "_key": "pgd-pgd-12",
         "seed": 0, "n_test": 10_000, "eps_256": 8, "attacks": {"pgd": {"steps": 7}}, "train": {**train, "source": src}}
    assert report.departures([e]) == {("src_eps", "4", "8"): ["R_{pgd->pgd} 12"]}
    assert "source's training eps (/256) 4 (paper 8)" in report.banner(report.departures([e]))
    e["train"]["source"]["eps"] = 8
    assert report.departures([e]) == {}


# ----------------------------------------------------------------------------------------------------------
# The extension points end to end: tiny real runs through Make and the report

TINY_MAKE = ["DATA=synthetic", "ARCH=resnet8", "EPOCHS_SRC=1", "EPOCHS_TL=1", "EPOCHS_BB=1",
             "TRAIN_FLAGS=--limit 40 --batch-size 20 --steps 1 --device cpu", "BB_FLAGS=--growth 4 --limit 20",
             "EVAL_FLAGS=--limit 20 --strong-steps 2 --restarts 1 --curve-eps 0 8 --device cpu"]


def make_run(tmp_path, py, *grid):
    import subprocess
    import sys
    from test_make import ROOT
    exe = tmp_path / "py"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {py or ''} \"$@\"\n")
    exe.chmod(0o755)
    r = subprocess.run(["make", "--no-print-directory", f"PY={exe}", f"RUN={tmp_path / 'run'}", *TINY_MAKE, *grid,
                        "all"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp_path / "run", r


def test_trades_source_bn_transfer_through_make_and_the_report(tmp_path):
    """TRADES as source and target training, a bn transfer, their evaluations with WB-CW, the report: the TRADES
    rows below the rule of Table 1, the WB-CW column after the paper's five; Figures 2-5 hold the paper's rows only."""
    run, _ = make_run(tmp_path, None, "SRC=trades", "TGT=trades", "UNFREEZE=bn", "BASE=trades")
    t1 = (run / "report" / "table1.md").read_text()
    table = t1.split("\n## CIFAR-100 sources")[0]
    head = next(line for line in table.splitlines() if line.startswith("| Network"))
    assert head.split(" | ")[2:7] == ["Clean", "BB-FGSM", "BB-PGD", "WB-FGSM", "WB-PGD"] and "WB-CW" in head
    rule = table.index(report.BEYOND)
    assert table.index("`R_trades`") > rule and table.index("`R_{trades->trades} bn`") > rule
    rows = [line for line in table.splitlines() if line.startswith("| `R_")]
    assert len(rows) == 32 and all(" – " in r for r in rows[:30])  # Table 1's 30 rows: not run; then the 2
    assert "`trades`" in t1.split("\n## CIFAR-100 sources")[1]  # the source, below its own rule
    out = (run / "report" / "report.md").read_text()
    assert "![](beyond.png)" in out and (run / "report" / "beyond.png").exists()
    assert not (run / "report" / "fig2.png").exists()  # no paper row ran: Figures 2-5 have nothing to draw


def test_toys_registered_at_run_time_flow_through_make_and_the_report(tmp_path):
    """tests/toypy.py registers a toy objective, column and strategy in common's tables; Make checks and plans them,
    the scripts train and evaluate them, the report shows them below its rules. Read by a plain interpreter (no
    toys), the same evaluations give one line per unknown name and the rest of the report, with Figures 2-5
    byte for byte those of the report with the toys: a method beyond the paper never enters them."""
    import subprocess
    import sys
    from test_make import ROOT
    toypy = ROOT / "tests" / "toypy.py"
    run, r = make_run(tmp_path, toypy, "SRC=toy", "TGT=nat", "UNFREEZE=stem", "BASE=nat")
    t1 = (run / "report" / "table1.md").read_text()
    assert "WB-half" in t1 and t1.index("`R_{toy->nat} stem`") > t1.index(report.BEYOND)
    bad = subprocess.run(["make", "-n", f"PY={sys.executable}", "SRC=toy", "all"], cwd=ROOT, capture_output=True,
                         text=True)  # without the toys, Make refuses the name
    assert bad.returncode == 2 and "SRC=toy: each must be one of nat fgsm pgd" in bad.stderr
    plain = subprocess.run([sys.executable, "report.py", "--run", str(run), "--out", str(tmp_path / "plain")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    notes = [line for line in plain.stdout.splitlines() if line.startswith("note: ")]
    # the toy source and transfer (their objective); the baseline and the DenseNet (their toy column)
    assert len(notes) == 4 and all("register it in common." in n for n in notes), notes
    assert sum("common.OBJECTIVES" in n for n in notes) == 2 and sum("common.COLUMNS" in n for n in notes) == 2
    t1 = (tmp_path / "plain" / "table1.md").read_text()
    assert "WB-half" not in t1 and "toy" not in t1 and report.BEYOND not in t1
    assert (run / "report" / "fig2.png").exists()  # R_nat ran: Figures 2-4 have a row to draw (Figure 5 none)
    for f in ("fig2", "fig3", "fig4", "fig5"):
        a, b = run / "report" / f"{f}.png", tmp_path / "plain" / f"{f}.png"
        assert a.exists() == b.exists() and (not a.exists() or a.read_bytes() == b.read_bytes()), f

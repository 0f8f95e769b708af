"""Any unfreezing depth and the depth sweep: the scale (bK: the last K residual blocks and the head; the paper's 1,
12, 56 on it), the documented table, freezing at every depth, a depth cohort against separate runs, bad depths,
`make depth`'s commands, its report (depth.md, depth.png, the reading's verdicts) and its cost estimate.
The sweep end to end on synthetic data is part of `make smoke` (tests/test_smoke.py).

    .venv/bin/python -m pytest tests/test_depth.py
"""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import bench
import common as c
import engine
import report
import transfer
from test_cohort import assert_same_run, load_run
from test_report import drawn_texts, outside, paper_train
from test_scripts import check_one_line_error, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


# ----------------------------------------------------------------------------------------------------------
# The scale and its table

def readme_table():
    """README's depth table: {depth: (K, weight layers, trainable parameters)}."""
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \| [^|]+ \| (\d+) \| ([\d,]+) \|$", read("README.md"), re.M)
    return {c.parse_unfreeze(u): (int(k), int(n), int(p.replace(",", ""))) for u, k, n, p in rows}


def test_every_allowed_depth_matches_the_documented_table():
    table = readme_table()
    assert list(table) == list(c.DEPTHS)  # every allowed depth, in order, and no other
    assert {u: (k, n, p) for u, k, n, p in report.depth_table()} == table
    # the paper's three strategies keep their trainable parameters
    assert (table[1][2], table[12][2], table[56][2]) == (650, 648_074, 853_018)
    assert (table[1][1], table[12][1], table[56][1]) == (1, 19, 56)  # weight layers: head; 18 convs + head; all


def test_makefile_lists_the_same_depths():
    mk = read("Makefile")
    names = subprocess.run([sys.executable, "common.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    ok = [n.split(":")[1] for n in names if n.startswith("depth:")]  # what Make checks UNFREEZE and DEPTHS against
    assert [c.parse_unfreeze(u) for u in ok] == list(c.DEPTHS)
    assert [n.split(":")[1] for n in names if n.startswith("strategy:")] == list(c.STRATEGIES)
    sweep = re.search(r"^DEPTHS\s*\?=(.*)$", mk, re.M).group(1).split()
    assert [c.parse_unfreeze(u) for u in sweep] == list(c.DEPTH_SWEEP)
    assert all(u in c.DEPTHS for u in c.DEPTH_SWEEP) and set(c.UNFREEZE) <= set(c.DEPTH_SWEEP)


def test_the_paper_depths_are_points_of_the_scale():
    assert [c.depth_k(u) for u in (1, 12, 56)] == [0, 9, 28]
    assert [c.depth_k(u) for u in c.DEPTHS] == list(range(29))  # one depth per K, shallow to deep
    for alias, paper in (("b0", 1), ("b9", 12), ("b28", 56)):  # one name per depth: the paper's
        with pytest.raises(c.UsageError, match=f"is the paper's {paper}: .*; write {paper},"):
            c.parse_unfreeze(alias)
    assert [c.parse_unfreeze(u) for u in ("1", "12", "56", "b3", 12)] == [1, 12, 56, "b3", 12]


def blocks(m):
    return [*m.layer1, *m.layer2, *m.layer3]


def expected_trainable(m, u):
    """The parameter names depth u trains, from the definition: head + the last K blocks; 56 everything."""
    k = c.depth_k(u)
    if k == 28:
        return {n for n, _ in m.named_parameters()}
    ids = {id(p) for b in blocks(m)[27 - k:] for p in b.parameters()} | {id(p) for p in m.linear.parameters()}
    return {n for n, p in m.named_parameters() if id(p) in ids}


@pytest.fixture(scope="module")
def resnet56():
    torch.manual_seed(0)
    return c.build_model("resnet56", 10)


@pytest.mark.parametrize("u", c.DEPTHS, ids=str)
def test_frozen_weights_do_not_move_at_any_depth(u, resnet56):
    m = resnet56
    params = c.freeze(m, u)
    want = expected_trainable(m, u)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == want
    assert len(params) == len(want)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-5)
    c.set_train_mode(m)
    g = torch.Generator().manual_seed(1)
    c.train_step(m, opt, torch.rand(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3]), "nat")
    for n, p in m.named_parameters():
        if n in want:
            assert not torch.equal(p, before[n]), f"{n} should have trained at {u}"
        else:
            assert torch.equal(p, before[n]), f"{n} is frozen at {u} but changed"


def test_a_smaller_resnet_takes_depths_up_to_its_blocks():
    m = c.build_model("resnet8", 10)  # 3 blocks: b1..b3; 12 is its layer3 (one block), which b1 would name again
    assert {u: k for u, k, _, _ in report.depth_table("resnet8")} == {1: 0, 12: 1, "b2": 2, "b3": 3, 56: 4}
    with pytest.raises(c.UsageError, match="has 3 residual blocks"):
        c.freeze(m, "b4")
    with pytest.raises(c.UsageError, match="b1 is this ResNet's 12 .*; write 12, so that one depth has one name"):
        c.freeze(m, "b1")  # one depth, one name: as b9 on ResNet56
    assert [u for u, _, _, _ in report.depth_table("resnet20")] == [1, "b1", "b2", 12, "b4", "b5", "b6", "b7", "b8", 56]


# ----------------------------------------------------------------------------------------------------------
# transfer.py at any depth

def test_depth_cohort_equals_its_members_separate_runs(tmp_path, tiny, tiny_source):
    """All depths of a sweep in one process: each member's files equal its own run's, weights bit for bit."""
    args = ["--src", "nat", "--tgt", "pgd", "--steps", "1", "--init", str(tiny_source), *tiny(), "--epochs", "2"]
    depths = ["1", "b2", "56"]
    transfer.main([*args, "--unfreeze", *depths, "--out", str(tmp_path / "cohort" / "nat-pgd-{unfreeze}.pt")])
    assert sorted(p.name for p in (tmp_path / "cohort").glob("*-*-*.pt") if ".last" not in p.name) == \
        ["nat-pgd-1.pt", "nat-pgd-56.pt", "nat-pgd-b2.pt"]  # the depth's name in the file's
    for u in depths:
        transfer.main([*args, "--unfreeze", u, "--out", str(tmp_path / "alone" / f"{u}.pt")])
        a, b = load_run(tmp_path / "cohort" / f"nat-pgd-{u}.pt"), load_run(tmp_path / "alone" / f"{u}.pt")
        want = c.parse_unfreeze(u)
        assert a["pt"]["unfreeze"] == want and a["pt"]["args"]["unfreeze"] == want  # recorded as it is named
        assert_same_run(a, b)
        assert all(torch.equal(a["pt"]["model"][n], b["pt"]["model"][n]) for n in a["pt"]["model"])


@pytest.mark.parametrize("depths, says", [(["b9"], "is the paper's 12: the last stage (layer3) and the head; write 12"),
                                          (["b0"], "paper's 1"), (["7"], "use 1, 12 or 56"), (["b30"], "K = 1..27"),
                                          (["B3"], "bK"), (["1", "b3", "b3"], "lists a depth twice")])
def test_a_bad_depth_is_one_line_before_any_work(depths, says, tmp_path, run_script):
    """Refused before the source is even read (its path does not exist here) and before anything is written."""
    r = run_script("transfer.py", ["--src", "nat", "--tgt", "nat", "--unfreeze", *depths, "--init", "missing.pt",
                                   "--data-dir", "synthetic", "--device", "cpu"], tmp_path)
    line = check_one_line_error(r)
    assert says in line and "missing.pt" not in line, line
    assert snapshot(tmp_path) == {}


def test_a_depth_beyond_the_sources_blocks_is_refused_before_training(tmp_path, tiny, tiny_source, run_script):
    r = run_script("transfer.py", ["--src", "nat", "--tgt", "nat", "--unfreeze", "1", "b5", "--init", tiny_source,
                                   *tiny()], tmp_path)
    assert "has 3 residual blocks" in check_one_line_error(r)
    assert snapshot(tmp_path) == {}


# ----------------------------------------------------------------------------------------------------------
# make depth

def test_make_depth_trains_each_source_target_as_one_cohort():
    r = subprocess.run(["make", "-n", "PY=python3", "CHECKED=1", "RUN=/nonexistent/run", "SRC=pgd", "TGT=nat fgsm",
                        "BASE=pgd",
                        "DEPTHS=1 b3 12 b20 56", "depth"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cmds = r.stdout.replace("\\\n", " ").splitlines()
    tl = [x for x in cmds if "transfer.py" in x]
    assert len(tl) == 2 and all("--unfreeze 1 b3 12 b20 56" in x for x in tl)  # one process per source x target
    evals = {m.group(1) for x in cmds for m in [re.search(r"--out /nonexistent/run/transfer/(\S+)\.eval\.json", x)]
             if m}
    assert evals == {f"pgd-{t}-{u}_s0" for t in ("nat", "fgsm") for u in ("1", "b3", "12", "b20", "56")}
    rep = [x for x in cmds if "report.py" in x]
    assert len(rep) == 1 and "--depth" in rep[0] and "--unfreeze 1 b3 12 b20 56" in rep[0]
    assert rep[0].rstrip().endswith("--out /nonexistent/run/depth/pgd-nat_fgsm")  # each pair in its own place


def test_make_depth_estimate_counts_the_cohort():
    """With every rate 1 img/s: one cohort of 8 depths x 50 epochs, then 8 evaluations, each classifying the
    two black-box sets; no source, baseline or DenseNet (they are `make all`'s)."""
    paths = {"reference": 1.0, "eager": 1.0}
    rows = {f"resnet56/{w}": {"img_s": paths} for w in ("train/nat", "train/fgsm", "train/pgd", "eval/clean",
                                                        "eval/fgsm", "eval/pgd")}
    rows["densenet121/train/nat"] = rows["densenet121/eval/clean"] = {"img_s": paths}
    est = bench.depth_estimate(rows, "resnet56")
    # clean, every white-box column in forward passes at the PGD-7 rate per pass (1/15 s): WB-FGSM 3, WB-PGD 15,
    # WB-strong 10 restarts x 101, WB-CW 41; then the curve's 6 other points, a PGD-7 each
    one_eval, bb = 10_000 * (1 + (3 + 15 + 10 * 101 + 41) / 15 + 6), 2 * 10_000
    nat = 8 * 50 * (47_500 + 2_500) + 8 * (one_eval + bb)
    adv = 8 * 50 * (47_500 + 2 * 2_500 + 256) + 8 * (one_eval + bb)
    assert est["nat"] * 3600 == pytest.approx(nat)
    assert est["fgsm"] * 3600 == pytest.approx(adv) and est["pgd"] * 3600 == pytest.approx(adv)


# ----------------------------------------------------------------------------------------------------------
# The depth report

def write_eval(run, role, key, acc, seed=0, unfreeze=None, src=None, tgt=None):
    """One evaluation as evaluate.py writes it (the fields the report reads)."""
    adv = tgt if role == "transfer" else key
    name = f"{src}-{tgt}-{unfreeze}" if role == "transfer" else key
    path = os.path.join(run, role, f"{name}_s{seed}.eval.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"role": role, "dataset": "cifar100" if role == "source" else "cifar10", "arch": "resnet56",
                   "adv": adv, "src": src, "tgt": tgt, "unfreeze": unfreeze, "seed": seed, "n_test": 10_000,
                   "eps": 8 / 256, "eps_256": 8, "eps_paper_scale": 16 / 256, "acc": acc, "flags": [],
                   "train": paper_train(role, adv, seed)}, f)


# pgd -> nat, shaped as the paper reads it: BB robustness at R_pgd's level (a point above: decisive for the claims
# rule on one seed and 10,000 images) while layer1-2 stay frozen, lost deeper; WB robustness never kept.
# (clean, BB-FGSM, BB-PGD, WB-FGSM, WB-PGD)
CURVE = {1: (65, 62, 63, 18, 12), "b3": (83, 82, 83, 25, 12), 12: (85, 82, 83, 26, 12),
         "b18": (90, 55, 45, 21, 1), 56: (91, 42, 32, 20, 0)}
R_PGD = (84, 81, 82, 45, 36)


def sweep_run(run, seeds=(0,)):
    for s in seeds:
        write_eval(run, "baseline", "pgd", dict(zip(report.COLS, R_PGD)), s)
        write_eval(run, "baseline", "nat", dict(zip(report.COLS, (93, 35, 13, 20, 0))), s)
        write_eval(run, "source", "pgd", {"clean": 55.0, "wb_fgsm": 22.0, "wb_pgd": 18.0}, s)
        for u, v in CURVE.items():
            write_eval(run, "transfer", None, {**dict(zip(report.COLS, v)), "wb_strong": max(v[4] - 1, 0)}, s,
                       unfreeze=u, src="pgd", tgt="nat")


def test_depth_report_rows_figure_and_reading(tmp_path):
    sweep_run(tmp_path)
    report.main(["--depth", "--run", str(tmp_path), "--src", "pgd", "--tgt", "nat", "--unfreeze", "1", "b3", "b6",
                 "12", "b18", "56"])
    out = tmp_path / "depth"
    assert (out / "depth.png").stat().st_size > 10_000
    md = (out / "depth.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \| [^|]+ \| ([\d,–]+) \| (\d+) \| ([^|]+) \|", md, re.M)
    # every depth, asked or evaluated, shallow to deep; b6 was asked but not run: a row of '–'
    assert [(u, k, n) for u, k, _, n, _ in rows] == [("1", "0", "1"), ("b3", "3", "1"), ("b6", "6", "0"),
                                                     ("12", "9", "1"), ("b18", "18", "1"), ("56", "28", "1")]
    assert rows[0][2] == "650" and rows[3][2] == "648,074" and rows[5][2] == "853,018"
    assert rows[3][4].strip() == "85.0 (84.6, +0.4)" and rows[2][4].strip() == "–"  # with the paper's value
    # the reading: BB kept at b3 and 12 (b6 not run: not testable), lost from b18; WB lost everywhere
    bb = next(line for line in md.splitlines() if line.startswith("- **BB**"))
    assert "(b3, b6, 12): **not testable here**" in bb and "At the last stage itself (12): holds" in bb
    assert "the paper's Table 1 there: holds" in bb
    assert "  - BB-PGD: holds at b3, 12; inconclusive at none; falls from b18" in md
    wb = next(line for line in md.splitlines() if line.startswith("- **WB**"))
    # b6 not run: the group is not testable (the one precedence: not testable before contradicted); at 12 itself
    # WB robustness is lost, and so it is in the paper's own numbers
    assert "(b3, b6, 12): **not testable here**" in wb and "At the last stage itself (12): contradicted" in wb
    assert "the paper's Table 1 there: contradicted" in wb
    assert "  - WB-PGD: holds at none; inconclusive at none; falls from 1" in md
    assert "| R_pgd | 1 | 84.0 (83.9, +0.1)" in md and "| source pgd on CIFAR-100 | 1 | 55.0 |" in md
    # without b6 asked, the depths up to the last stage all hold
    report.main(["--depth", "--run", str(tmp_path), "--src", "pgd", "--tgt", "nat"])
    md = (out / "depth.md").read_text()
    assert "up to the last stage (b3, 12): **holds**" in md and "`b6`" not in md
    assert "up to the last stage (b3, 12): **contradicted**" in md  # WB
    assert "No flags on these models, the source and R_src included." in md
    # a flagged R_src is named in depth.md, and the depths it voids are not testable, so the fall skips them
    p = tmp_path / "baseline" / "pgd_s0.eval.json"
    e = json.loads(p.read_text())
    p.write_text(json.dumps({**e, "flags": [{"check": "pgd-not-converged", "detail": "x"}]}))
    report.main(["--depth", "--run", str(tmp_path), "--src", "pgd", "--tgt", "nat"])
    md = (out / "depth.md").read_text()
    assert "**Flagged** (a flag voids the columns it concerns" in md and "R_pgd seed 0: `pgd-not-converged`" in md
    assert "  - WB-PGD: holds at none; inconclusive at none; does not fall" not in md  # WB-PGD: nothing to compare
    assert "  - WB-PGD: holds at none; inconclusive at none; nothing to compare" in md
    p.write_text(json.dumps(e))
    # the main report reads a run holding depth-sweep transfers: Table 1 rows as before
    report.main(["--run", str(tmp_path)])
    assert "R_{pgd->nat} 12" in (tmp_path / "report" / "table1.md").read_text()


def test_depth_figure_text_stays_on_its_canvas(tmp_path):
    sweep_run(tmp_path, seeds=(0, 1))
    with drawn_texts() as seen:
        report.main(["--depth", "--run", str(tmp_path), "--src", "pgd", "--tgt", "nat", "--unfreeze", "1", "b3", "b6",
                     "12", "b18", "56"])
    assert {f for f, *_ in seen} == {"depth.png.tmp"} and not outside(seen), outside(seen)


def test_depth_report_with_seeds_and_bad_input(tmp_path, capsys):
    sweep_run(tmp_path, seeds=(0, 1, 2))
    report.main(["--depth", "--run", str(tmp_path), "--src", "pgd", "--tgt", "nat"])
    md = (tmp_path / "depth" / "depth.md").read_text()
    assert "| `12` | 9 | the last stage (layer3) and the head | 648,074 | 3 | 85.0 ± 0.0 (84.6, +0.4)" in md
    for argv, says in ((["--unfreeze", "b9"], "is the paper's 12"), (["--src", "fgsm"], "no evaluated transfer of "
                                                                     "fgsm->nat"), (["--margin", "-1"], "--margin")):
        with pytest.raises(SystemExit) as e:
            engine.run_main(lambda: report.main(["--depth", "--run", str(tmp_path), "--src", "pgd", "--tgt", "nat",
                                                 *argv]))
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err


def test_depth_verdicts_are_the_claims_rule():
    """depth_compare ('transfer > R_src - margin') is report.compare, the claims' paired test with the declared
    seed spread (1 point for each model, R_src's training shared by every depth), at the claims' error rate: a
    group of depths holds only when all hold (no correction), and is contradicted when any one is, so that side
    is Bonferroni-corrected over the k depths of the curve."""
    def es(v, n=10_000, flags=()):
        return [{"acc": {"bb_pgd": v}, "n_test": n, "seed": 0, "flags": [{"check": f} for f in flags], "_table": "c10",
                 "_key": "pgd"}]
    # no per-image bits here: the unpaired bound, and the declared spread of each of the two models
    se = math.hypot(c.binomial_se(84, 10_000) + c.binomial_se(82, 10_000), math.sqrt(2) * report.SEED_SD)
    d, half, v = report.depth_compare(es(84), es(82), "bb_pgd", 2, 1)
    assert (d, v) == (pytest.approx(2), "holds") and half == pytest.approx(report.t_quantile(0.975) * se)
    d6, half6, v6 = report.depth_compare(es(84), es(82), "bb_pgd", 2, 6)
    assert (half6, v6) == (half, "holds")  # holding at every depth needs no correction
    c1 = report.compare([(1, es(84), "bb_pgd")], [(1, es(82), "bb_pgd")], -2, "greater", report.ALPHA, k=6)
    assert (c1.estimate, c1.hi - c1.estimate, c1.verdict) == (d6, half6, "holds")
    # 5.5 points below R_src, 3.5 beyond the margin: contradicted alone, not as one of 6 depths (t 2.64, not 1.96)
    assert report.depth_compare(es(76.5), es(82), "bb_pgd", 2, 1)[2] == "contradicted"
    assert report.depth_compare(es(76.5), es(82), "bb_pgd", 2, 6)[2] == "inconclusive"
    assert report.depth_compare(es(80.5, 200), es(82, 200), "bb_pgd", 2, 1)[2] == "inconclusive"  # 200 images
    assert report.depth_compare([], es(82), "bb_pgd", 2, 1) == (None, None, "not testable here")
    assert report.depth_compare(es(83, flags=("constant-class",)), es(82), "bb_pgd", 2, 1)[2] == "not testable here"


def test_where_robustness_falls_and_how_depths_combine():
    h, x, i, n = "holds", "contradicted", "inconclusive", "not testable here"
    assert report.falls_from([(1, x), ("b3", h), (12, i), ("b18", x), (56, x)]) == "b18"
    assert report.falls_from([(1, x), ("b3", x), (56, x)]) == 1
    assert report.falls_from([(1, x), ("b3", x), ("b6", n), (56, x)]) == 1  # a depth not evaluated is no break
    assert report.falls_from([(1, x), (12, h), (56, i)]) is None
    # one precedence everywhere, the claims' too: not testable, contradicted, holds, inconclusive
    assert [report.combine(v) for v in ([h, h], [h, i], [h, x, n], [h, n], [], [i, x])] == [h, i, n, n, n, x]

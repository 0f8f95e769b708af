"""report.py on synthetic run directories: table layout, seeds, heatmap scale, claims, flags, figures, what ran
and how it departs from the paper's protocol, bad input; and end to end on evaluate.py's output of models the
training scripts trained.

    .venv/bin/python -m pytest tests/test_report.py
"""
import base64
import contextlib
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import engine  # noqa: E402
import report  # noqa: E402
import matplotlib.figure  # noqa: E402  (report chose the backend)
import matplotlib.text  # noqa: E402

CURVE_EPS = [0, 1, 2, 4, 8, 16, 32]


def paper_train(role, adv, seed=0):
    """The training record evaluate.py copies from a checkpoint, for a run at the paper's protocol (written out
    here, independently of report.py's own table of it)."""
    adversarial = adv != "nat"
    rows = [{"epoch": i, "lr": 0.1, "loss": 2.0 / i, "train_clean": 30.0 + 20 * i, "val_clean": 25.0 + 20 * i,
             "seconds": 60.0, "images_per_s": 800.0, **({"train_adv": 10.0 * i, "val_adv": 8.0 * i,
                                                          "train_batch_pgd": 9.0 * i} if adversarial else {})}
            for i in (1, 2, 3)]
    return {"arch": "densenet121" if role == "blackbox" else "resnet56", "growth": 12 if role == "blackbox" else None,
            "epochs": 50 if role == "transfer" else 200, "batch_size": 100, "lr": 0.1,
            "wd": 1e-5 if role in ("source", "baseline") and adversarial else 5e-5,
            "milestones": [0.4, 0.8] if role == "transfer" else [0.5, 0.75], "eps": 8.0, "steps": 7,
            "random_start": False, "label_fix": True, "limit": None, "seed": seed, "data_dir": "data",
            "freeze_bn": False if role == "transfer" else None, "n_train": 47_500, "n_val": 2_500,
            "epoch": 3, "val": rows[-1], "collapse": None, "rows": rows}


def comonotone(acc, n, shift=0):
    """Per-image results that agree across rows as much as their accuracies allow: an image is right when it ranks
    among the first acc% of one fixed order of the test images (rotated by shift, e.g. per seed)."""
    order = np.roll(np.random.default_rng(0).permutation(n), shift)
    out = {}
    for k, v in acc.items():
        if v is not None:
            out[k] = np.zeros(n, bool)
            out[k][order[:round(v * n / 100)]] = True
    return out


def write_eval(run, key, acc, seed=0, role=None, flags=(), curve=True, train=None, n_test=10_000, bits=None):
    """One eval JSON as evaluate.py writes it; train: changes to the paper-protocol training record (None: none);
    bits: {column: which images are right} (per_image, as evaluate.py records it; acc must agree), "comonotone"
    (comonotone(acc)), or None: an evaluation from before per-image results were recorded."""
    parts = key.split("-")
    if role is None:
        role = "transfer" if len(parts) == 3 else "baseline"
    src, tgt, unf = (parts[0], parts[1], int(parts[2])) if role == "transfer" else (None, None, None)
    adv = tgt if role == "transfer" else ("nat" if role == "blackbox" else key)
    sub = {"transfer": "transfer", "baseline": "baselines", "source": "sources", "blackbox": "blackbox"}[role]
    base = os.path.join(run, sub, f"{key}_s{seed}")
    os.makedirs(os.path.dirname(base), exist_ok=True)
    e = {"ckpt": base + ".pt", "role": role, "dataset": "cifar100" if role == "source" else "cifar10",
         "arch": "resnet56", "adv": adv, "src": src, "tgt": tgt, "unfreeze": unf, "seed": seed, "n_test": n_test,
         "eps": 8 / 256, "eps_256": 8, "eps_paper_scale": 16 / 256, "data_dir": "data",
         "attacks": {"fgsm": {"labels": "true"}, "pgd": {"steps": 7, "alpha": 2 / 256, "random_start": False}},
         "acc": acc, "flags": list(flags), "device": "NVIDIA H100", "torch": "2.5.0", "wall_s": 10.0,
         "date": "2025-01-01 00:00:00", "train": {**paper_train(role, adv, seed), **(train or {})}}
    if bits is not None:
        bits = comonotone(acc, n_test) if bits == "comonotone" else bits
        e["per_image"] = {"n": n_test, "correct": {k: base64.b64encode(np.packbits(v)).decode() for k, v in
                                                   bits.items()}}
    if curve:
        top = acc.get("clean") or 50.0
        e["curve"] = {"eps_256": CURVE_EPS, "acc": [top * 0.7 ** i for i in range(len(CURVE_EPS))]}
    with open(base + ".eval.json", "w") as f:
        json.dump(e, f)
    return base + ".eval.json"


def paper_acc(key, extra=True):
    acc = dict(zip(report.COLS, report.PAPER.get(key, (80.0, 50.0, 50.0, 30.0, 20.0))))
    if extra:
        acc.update(wb_strong=max(acc["wb_pgd"] - 1, 0), worst=max(acc["wb_pgd"] - 2, 0))
    return acc


def full_run(run, skip=(), override=None, bits=None, flags=None):
    """Every row with the paper's numbers (made-up ones for the 6 unshown transfers), sources and DenseNet; bits
    and flags ({row: [flag]}) as write_eval's."""
    for k in report.ROWS:
        if k not in skip:
            write_eval(run, k, {**paper_acc(k), **(override or {}).get(k, {})}, bits=bits,
                       flags=(flags or {}).get(k, ()))
    for k, (c, f, p) in report.PAPER_SRC.items():
        write_eval(run, k, {"clean": c, "wb_fgsm": f, "wb_pgd": p}, role="source")
    write_eval(run, "densenet", {"clean": 93.0}, role="blackbox")


def rows(out):
    with open(os.path.join(out, "table1.csv"), newline="") as f:
        return {r["key"]: r for r in csv.DictReader(f)}


def build(run):
    out = os.path.join(run, "report")
    report.main(["--run", str(run), "--out", out])
    return out


def read(out, name):
    with open(os.path.join(out, name)) as f:
        return f.read()


def test_table1_rows_values_and_missing(tmp_path):
    full_run(tmp_path, skip=("nat-pgd-1",), override={"pgd-pgd-56": {"wb_pgd": 44.0}, "pgd": {"bb_fgsm": None}})
    out = build(tmp_path)
    with open(os.path.join(out, "table1.csv"), newline="") as f:
        keys = [r["key"] for r in csv.DictReader(f)]
    assert keys == report.ROWS  # every row, the missing one included, in Table 1's order
    r = rows(out)
    assert r["pgd-pgd-56"]["network"] == "R_{pgd->pgd} 56"
    assert (r["pgd-pgd-56"]["wb_pgd"], r["pgd-pgd-56"]["wb_pgd_paper"], r["pgd-pgd-56"]["wb_pgd_diff"]) == \
        ("44.00", "41.3", "+2.70")
    assert r["nat"]["clean"] == "92.50" and r["nat"]["clean_paper"] == "92.5" and r["nat"]["clean_diff"] == "+0.00"
    # a missing row and a missing cell are empty (numeric columns stay numeric), never 0
    assert all(r["nat-pgd-1"][c] == "" for c in report.COLS + report.EXTRA)
    assert r["nat-pgd-1"]["clean_paper"] == "52.2"
    assert r["pgd"]["bb_fgsm"] == "" and r["pgd"]["bb_fgsm_diff"] == "" and r["pgd"]["bb_pgd"] == "82.10"
    # the 6 transfers the paper did not show have no paper value
    assert r["fgsm-pgd-12"]["clean_paper"] == "" and r["fgsm-pgd-12"]["clean"] == "80.00"
    md = read(out, "table1.md")
    line = next(l for l in md.splitlines() if "`R_{nat->pgd} 1`" in l)
    cells = [c.strip() for c in line.split("|")[3:10]]  # Clean .. Worst: reproduced part missing, paper kept
    assert cells == ["– (52.2)", "– (30.6)", "– (32.8)", "– (13.2)", "– (0.0)", "–", "–"]
    assert "44.0 (41.3, +2.7)" in md and "WB-strong" in md
    assert "| `fgsm` | 1 | 62.2 (62.2, +0.0) | 42.7 (42.7, +0.0) | 3.5 (3.5, +0.0)" in md
    assert "93.0 (93.2, -0.2)" in md
    rep = read(out, "report.md")
    assert "R_{nat->pgd} 1" in rep.split("## What was not run")[1].split("##")[0]
    assert "0.0625 on the paper's [-1,1] scale" in rep and "steps=7" in rep


def test_seeds_mean_std_n(tmp_path):
    full_run(tmp_path, skip=("pgd",))
    for seed, (clean, wbp) in enumerate([(80.0, 30.0), (82.0, 33.0), (87.0, 36.0)]):
        write_eval(tmp_path, "pgd", {**paper_acc("pgd"), "clean": clean, "wb_pgd": wbp}, seed=seed)
    out = build(tmp_path)
    r = rows(out)["pgd"]
    # mean 83, sample std sqrt((9 + 1 + 16) / 2) = 3.606; WB-PGD mean 33, std 3
    assert (r["n_seeds"], r["clean"], r["clean_std"], r["clean_n"]) == ("3", "83.00", "3.61", "3")
    assert (r["wb_pgd"], r["wb_pgd_std"], r["wb_pgd_diff"]) == ("33.00", "3.00", "-3.10")
    assert rows(out)["nat"]["clean_std"] == ""  # one seed: the value alone
    md = read(out, "table1.md")
    line = next(l for l in md.splitlines() if "`R_pgd`" in l)
    assert "| 3 |" in line and "83.0 ± 3.6 (83.9, -0.9)" in line and "33.0 ± 3.0 (36.1, -3.1)" in line


def test_normalise():
    m = np.array([[10.0, 5.0, 7.0], [30.0, 5.0, np.nan], [20.0, 5.0, 3.0]])
    n = report.normalise(m)
    assert n[:, 0].tolist() == [0.0, 1.0, 0.5]
    assert np.isnan(n[:, 1]).all()  # constant column: no row is best (drawn grey, marked "all equal")
    assert n[0, 2] == 1.0 and n[2, 2] == 0.0 and np.isnan(n[1, 2])
    assert np.isnan(report.normalise(np.array([[np.nan], [np.nan]]))).all()


def verdicts(run):
    """Claim verdicts from a run directory: report.py's own reading and claims code, without drawing figures."""
    text = report.claims_md(report.group(report.load(str(run)))[0])[0]
    return [part.split("**Verdict: ")[1].split("**")[0] for part in text.split("## Claim ")[1:]]


ONE = ", " + report.ONE_SEED
NO_SPREAD = (0.0, None, "no seed spread")  # the test images' noise alone: what pairing decides
EFFECT = "(effect consistent with the paper's +5.2)"


def test_claims_flip(tmp_path):
    """The paper's own numbers on one seed of 10,000 images: the large effects hold; the similarity claims (within
    3.1 points, within a ratio of 0.80-1.25) cannot be decided with the declared spread of 1 point per model, as
    the paper's own one-seed table could not. Three seeds whose measured spread is 0.3 points decide every claim,
    claim 3 against the paper (its own WB-PGD shares are 3.8 times apart). Reversed numbers contradict."""
    full_run(tmp_path / "a", bits="comonotone")
    v = verdicts(tmp_path / "a")
    assert v == [f"holds {EFFECT}{ONE}", "holds" + ONE] + ["inconclusive" + ONE] * 2 + ["holds" + ONE] * 2 + [
        "inconclusive" + ONE] * 3
    for s, dv in enumerate((-0.3, 0.0, 0.3)):
        for k in report.ROWS:
            write_eval(tmp_path / "s", k, {c: max(x + dv, 0.0) for c, x in paper_acc(k).items()}, seed=s,
                       bits="comonotone")
    assert verdicts(tmp_path / "s") == [f"holds {EFFECT}", "holds", "contradicted"] + ["holds"] * 6
    claims = report.claims_md(report.group(report.load(str(tmp_path / "s")))[0])[0]
    assert "0.30 points per model, measured: pooled over" in claims
    claim3 = claims.split("## Claim 3")[1].split("## Claim 4")[0]
    assert "The paper's own numbers: as read, **contradicted**" in claim3 and "fails this reading" in claim3
    full_run(tmp_path / "b", bits="comonotone", override={
        "pgd-pgd-56": {"wb_pgd": 30.0}, "nat-pgd-12": {"wb_pgd": 35.0}, "pgd-nat-56": {"bb_pgd": 80.0},
        "fgsm-fgsm-12": {"wb_fgsm": 85.0}})
    # each reversed by 6 points or more, beyond one seed's interval with the declared spread: contradicted; claim 9
    # is one-sided ('close to the best'), and R_{pgd->pgd} 12 now 9.1 points above 56 is no failure of it
    assert verdicts(tmp_path / "b") == [f"contradicted (effect opposite to the paper's +5.2){ONE}", "holds" + ONE,
                                        "inconclusive" + ONE] + ["contradicted" + ONE] * 3 + [
        "inconclusive" + ONE] * 2 + ["holds" + ONE]
    full_run(tmp_path / "c", skip=("pgd-pgd-56", "fgsm-nat-12"), bits="comonotone")
    v = verdicts(tmp_path / "c")
    for i in (0, 7, 8):
        assert v[i] == "not testable here (missing: R_{pgd->pgd} 56 WB-PGD)" or "R_{pgd->pgd} 56" in v[i], v[i]
    assert all(v[i].startswith("not testable here") and "R_{fgsm->nat} 12" in v[i] for i in (1, 2))
    assert v[3:7] == verdicts(tmp_path / "a")[3:7]  # the claims that need neither row: as in the full run


def two_rows(run, n, agree, diff, base=50.0, col="wb_pgd", keys=("pgd-pgd-56", "pgd"), paired=True):
    """Two rows on the same n images: the second right on base%, the first diff points more, the two agreeing on
    a fraction agree of the images. Returns their evaluations, as the report groups them."""
    m, d = round((1 - agree) * n), round(diff * n / 100)
    a_only, b_only = (m + d) // 2, (m - d) // 2
    both = round(base * n / 100) - b_only
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:both + a_only] = True  # images [0, both) right for both, then a alone, then b alone
    b[:both] = b[both + a_only:both + a_only + b_only] = True
    for k, right in zip(keys, (a, b)):
        acc = {**paper_acc(k), col: 100 * right.sum() / n}
        write_eval(run, k, acc, n_test=n, bits={col: right} if paired else None)
    g = report.group(report.load(str(run)))[0]
    return [g[("c10", k)] for k in keys]


def test_paired_difference_decides_on_many_images_not_on_few(tmp_path):
    """A 2-point difference between two models that agree on 95% of the images: the paired (McNemar) standard
    error is sqrt((0.05 - 0.02^2) / N), 0.22 points on 10,000 images (decisive) and 1.6 on 200 (not; 1.83 with
    the two images at each extreme that keep it honest on few images)."""
    for n, se, verdict in ((10_000, 0.224, "holds"), (200, 1.83, "inconclusive")):
        a, b = two_rows(tmp_path / str(n), n, agree=0.95, diff=2.0)
        r = report.compare([(1, a, "wb_pgd")], [(1, b, "wb_pgd")], spread=NO_SPREAD)
        assert (r.lhs, r.rhs, r.estimate) == pytest.approx((52.0, 50.0, 2.0))
        assert r.se == pytest.approx(se, rel=0.02) and r.verdict == verdict and r.seeds == 1
        assert r.notes == [report.ONE_SEED]  # one seed: the verdict says the seed spread is not measured
        assert r.hi - r.estimate == pytest.approx(1.96 * r.se, rel=1e-3)
        # by default a one-seed comparison adds the declared spread, 1 point for each of the two models
        r = report.compare([(1, a, "wb_pgd")], [(1, b, "wb_pgd")])
        assert r.se == pytest.approx(math.hypot(se, math.sqrt(2) * report.SEED_SD), rel=0.02)
        assert r.verdict == "inconclusive" and r.mde == pytest.approx((1.96 + 0.8416) * r.se, rel=1e-3)
    # the headline claim on these numbers: +2 may be an improvement or none, and is below the paper's +5.2
    assert verdicts(tmp_path / "10000")[0] == f"inconclusive (effect smaller than the paper's +5.2){ONE}"
    # pairing is what decides: 1 point at 98% agreement is decisive paired, not with the unpaired bound
    a, b = two_rows(tmp_path / "p1", 10_000, agree=0.98, diff=1.0)
    assert report.compare([(1, a, "wb_pgd")], [(1, b, "wb_pgd")], spread=NO_SPREAD).verdict == "holds"
    a, b = two_rows(tmp_path / "u1", 10_000, agree=0.98, diff=1.0, paired=False)
    r = report.compare([(1, a, "wb_pgd")], [(1, b, "wb_pgd")], spread=NO_SPREAD)
    assert r.verdict == "inconclusive" and r.se == pytest.approx(2 * common.binomial_se(50.5, 10_000), rel=0.01)
    assert "no per-image results to pair: unpaired bound" in r.notes


def test_equivalence_is_two_one_sided_tests(tmp_path):
    """|D| < 3: holds when the whole interval lies inside (-3, 3), contradicted when it lies wholly outside."""
    for diff, n, verdict in ((0.5, 10_000, "holds"), (5.0, 10_000, "contradicted"), (2.5, 10_000, "inconclusive"),
                             (0.5, 200, "inconclusive")):
        a, b = two_rows(tmp_path / f"{diff}-{n}", n, agree=0.9, diff=diff, col="bb_pgd")
        assert report.compare([(1, a, "bb_pgd")], [(1, b, "bb_pgd")], 3, "equivalent",
                              spread=NO_SPREAD).verdict == verdict, diff


def seeded(run, key, col, values, n=10_000):
    """One row, a seed per value of col (the other columns the paper's), per-image results rotated per seed."""
    for s, v in enumerate(values):
        acc = {**paper_acc(key), col: v}
        write_eval(run, key, acc, seed=s, n_test=n, bits=comonotone(acc, n, shift=997 * s))


def test_three_seeds_spread_3_mean_difference_1_is_inconclusive(tmp_path):
    """Per-seed differences -2, +1, +4 (spread 3 points): the standard error of their mean is 3 / sqrt(3) = 1.7, and
    with 3 seeds the interval takes Student's t with 2 degrees of freedom (4.30, not 1.96): +1 +- 7.5."""
    seeded(tmp_path, "pgd-pgd-56", "wb_pgd", [34.1, 37.1, 40.1])
    seeded(tmp_path, "pgd", "wb_pgd", [36.1, 36.1, 36.1])
    g = report.group(report.load(str(tmp_path)))[0]
    r = report.compare([(1, g[("c10", "pgd-pgd-56")], "wb_pgd")], [(1, g[("c10", "pgd")], "wb_pgd")])
    assert r.estimate == pytest.approx(1.0) and r.seeds == 3 and r.verdict == "inconclusive"
    assert r.se == pytest.approx(3 / 3 ** 0.5, rel=0.05) and report.ONE_SEED not in r.notes
    assert (r.hi - r.estimate) / r.se == pytest.approx(report.t_quantile(0.975, 2)) == pytest.approx(4.303, abs=1e-3)
    v = verdicts(tmp_path)[0]
    assert v == f"inconclusive {EFFECT}"  # three seeds: no one-seed label


def test_the_seed_spread_is_pooled_over_the_run(tmp_path):
    """With 3 seeds, a comparison's own seeds give 2 degrees of freedom (t = 4.30); the run's rows pooled give
    many more. Left out of the pool: rows pressed against 0% (no room to spread) and flagged numbers."""
    seeded(tmp_path, "pgd", "wb_pgd", [35.1, 36.1, 37.1])  # sd 1 each
    seeded(tmp_path, "pgd-pgd-56", "wb_pgd", [40.3, 41.3, 42.3])
    seeded(tmp_path, "pgd-pgd-12", "wb_pgd", [38.1, 39.1, 40.1])
    seeded(tmp_path, "nat", "wb_pgd", [0.0, 0.0, 0.1])  # at the floor
    for s, v in enumerate([10.0, 30.0, 50.0]):  # a wild spread, but flagged: PGD-7 not converged
        write_eval(tmp_path, "fgsm", {**paper_acc("fgsm"), "wb_pgd": v}, seed=s,
                   flags=[{"check": "pgd-not-converged", "detail": "x"}])
    g = report.group(report.load(str(tmp_path)))[0]
    sd, df, how = report.seed_spread(g, "wb_pgd")
    assert (sd, df) == (pytest.approx(1.0), 6) and "pooled over 3 rows (6 df)" in how
    assert report.seed_spread(g, "autoattack") == (report.SEED_SD, None, "1 point per model, declared (no row "
                                                                          "measures it)")
    terms = [(1, g[("c10", "pgd-pgd-56")], "wb_pgd")], [(1, g[("c10", "pgd")], "wb_pgd")]
    own, pooled = report.compare(*terms), report.compare(*terms, spread=(sd, df, how))
    assert (own.hi - own.estimate) / own.se == pytest.approx(report.t_quantile(0.975, 2))
    assert (pooled.hi - pooled.estimate) / pooled.se == pytest.approx(report.t_quantile(0.975, 6))
    # D's seed part: sd x sqrt(2 / 3) for two separate trainings over 3 seeds, the images' part in quadrature
    assert pooled.se > math.sqrt(2 / 3) and pooled.se == pytest.approx(math.sqrt(2 / 3), abs=0.1)


def test_transfers_of_one_source_share_its_training():
    """A mean over three transfers of one source moves with that source's training: its seed part is a whole
    model's spread, not a third of the variance (as for three separate trainings)."""
    def row(src=None):
        e = {"acc": {"bb_pgd": 60.0}, "n_test": 10 ** 9, "seed": 0, "flags": [], "_table": "c10", "_key": "x"}
        return [{**e, "role": "transfer", "src": src} if src else {**e, "role": "baseline"}]
    base = [(1, row(), "bb_pgd")]
    one = report.compare([(1 / 3, row("pgd"), "bb_pgd") for _ in range(3)], base, spread=(1.0, None, ""))
    three = report.compare([(1 / 3, row(s), "bb_pgd") for s in report.ADV], base, spread=(1.0, None, ""))
    assert one.se == pytest.approx(math.sqrt(2), rel=1e-3) and three.se == pytest.approx(math.sqrt(4 / 3), rel=1e-3)


def test_t_quantile():
    for p, df, x in ((0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 5, 2.5706), (0.975, 30, 2.0423),
                     (0.995, 4, 4.6041), (0.9875, 2, 6.2053), (0.975, None, 1.9600)):
        assert report.t_quantile(p, df) == pytest.approx(x, abs=1e-4), (p, df)


def test_one_seed_on_few_images_is_inconclusive_either_way(tmp_path):
    """A smoke-sized run (one seed, 50 test images) can neither confirm nor refute the headline claim, whatever
    its numbers; the same numbers on 10,000 images decide it, in the direction of the difference, and say that
    they rest on one seed. (Old evaluations without per-image results: the unpaired bound.)"""
    for n_test, wbp, expect in ((50, 30.0, "inconclusive"), (50, 42.0, "inconclusive (effect consistent"),
                                (10_000, 30.0, "contradicted (effect opposite to"),
                                (10_000, 42.0, "holds (effect consistent")):
        run = tmp_path / f"{n_test}-{wbp}"
        write_eval(run, "pgd", paper_acc("pgd"), n_test=n_test)  # WB-PGD 36.1
        write_eval(run, "pgd-pgd-56", {**paper_acc("pgd-pgd-56"), "wb_pgd": wbp}, n_test=n_test)
        v = verdicts(run)[0]
        assert v.startswith(expect) and v.endswith(ONE), (n_test, wbp, v)
    # 0 of 50 right is not an exact 0%: against 1 of 50 (2%) nothing is decided (a plain binomial error, 0 at 0%,
    # would call 0% vs 2% +- 2.0 a contradiction)
    write_eval(tmp_path / "zero", "pgd", {**paper_acc("pgd"), "wb_pgd": 2.0}, n_test=50)
    write_eval(tmp_path / "zero", "pgd-pgd-56", {**paper_acc("pgd-pgd-56"), "wb_pgd": 0.0}, n_test=50)
    assert verdicts(tmp_path / "zero")[0] == f"inconclusive {EFFECT}{ONE}"
    # paired, two models right on none of 50 images agree on every image, which is still no proof that they differ
    # by less than the paper's 5.2 points (the smoke's case: it once read "contradicted")
    for k in ("pgd", "pgd-pgd-56"):
        write_eval(tmp_path / "agree", k, {**paper_acc(k), "wb_pgd": 0.0}, n_test=50,
                   bits={"wb_pgd": np.zeros(50, bool)})
    assert verdicts(tmp_path / "agree")[0] == f"inconclusive {EFFECT}{ONE}"


def test_flagged_rows_decide_nothing(tmp_path):
    """A constant-class model (the smoke's broken transfers: every column at its class's share) is flagged by
    evaluate.py, and every claim that needs its row is 'not testable here', naming the row and the flag. A flag
    voids only the columns it concerns: PGD-7 not converged voids WB-PGD, not the black-box columns."""
    import evaluate
    const = dict.fromkeys(report.COLS + ("wb_strong", "worst"), 10.0)
    flags = evaluate.sanity_flags(const, n=10_000, classes=10, pred_counts=[9_600] + [50] * 8)
    assert {f["check"] for f in flags} >= {"constant-class", "chance-level"}
    override = {"pgd-pgd-56": const, "pgd": {"wb_strong": 20.0}}
    checks = {"pgd-pgd-56": flags, "pgd": evaluate.sanity_flags({**paper_acc("pgd"), "wb_strong": 20.0}, n=10_000)}
    assert [f["check"] for f in checks["pgd"]] == ["pgd-not-converged"]
    full_run(tmp_path, bits="comonotone", override=override, flags=checks)
    v = verdicts(tmp_path)
    for i in (0, 7, 8):  # claims 1, 8, 9 need R_{pgd->pgd} 56
        assert v[i].startswith("not testable here (flagged: ") and "R_{pgd->pgd} 56 seed 0: `constant-class`" in v[i]
    assert "R_pgd seed 0: `pgd-not-converged`" in v[0]
    for i in (2, 4):  # claim 3's WB-PGD share and claim 5 rest on R_pgd's WB-PGD
        assert v[i] == "not testable here (flagged: R_pgd seed 0: `pgd-not-converged`)", v[i]
    assert not v[3].startswith("not testable") and not v[6].startswith("not testable")  # R_pgd's BB columns count
    out = build(tmp_path)
    assert "not testable here (flagged" in read(out, "claims.md")
    assert "**R_{pgd->pgd} 56** seed 0: `constant-class`" in read(out, "report.md")


def test_a_share_of_nothing_is_not_testable(tmp_path):
    """Claim 3 compares shares of the baselines' white-box accuracy, claim 5 a fraction of R_pgd's: a baseline at 0%
    has none to share, and both say so alike."""
    full_run(tmp_path, bits="comonotone", override={"fgsm": {"wb_pgd": 0.0}})
    assert verdicts(tmp_path)[2] == ("not testable here (R_fgsm WB-PGD is 0.0%, not measurably above 0: no robustness "
                                     "to take a fraction of)")
    full_run(tmp_path / "p", bits="comonotone", override={"pgd": {"wb_pgd": 0.0}})
    v = verdicts(tmp_path / "p")
    assert v[2] == v[4] == ("not testable here (R_pgd WB-PGD is 0.0%, not measurably above 0: no robustness to take "
                            "a fraction of)")


def test_claims_as_the_paper_states_them_and_the_rule(tmp_path):
    """claims.md quotes each claim with its section, states the rule, its error rate and assumptions; report.md
    counts the verdicts, how many rest on one seed and how to measure it; old evaluations still report."""
    full_run(tmp_path, bits="comonotone")
    out = build(tmp_path)
    claims = read(out, "claims.md")
    for piece in ('"However, both approaches seem to transfer proportionally the same amount of the achieved '
                  'robustness against WB attacks." (Sec. 3.1)', "achieves 5.2% accuracy improvement",
                  "preserve the robustness of the learned features against BB attacks", "(Sec. 3.2)", "(Sec. 4",
                  "at most 2.5%", "Assumptions", "McNemar", report.ONE_SEED, "Bonferroni", "BB_SEED",
                  "FDA 2001", "within **3.1 points**", "with one seed, that the true seed spread is at most the "
                  "declared σ", "report.py --calibrate", "80% power at (points from the margin)",
                  "intersection-union"):
        assert piece in claims, piece
    assert claims.count("\nHypothesis: ") == 9  # each claim's hypothesis, before its numbers
    assert claims.index("Hypothesis: D = R_{pgd->pgd} 56") < claims.index("| R_{pgd->pgd} 56 − R_pgd, WB-PGD |")
    assert "1 point per model, declared (no row measures it), in every column" in claims
    rep = read(out, "report.md")
    assert "9 claims: 4 hold, 0 contradicted, 5 inconclusive, 0 not testable here. **9 of them rest on one seed**" \
        in rep and 'make SEEDS="0 1 2" all' in rep and "No per-image results" not in rep
    assert "our rule" in rep and "picks on the test set" in rep  # Figure 3's row choice, stated
    full_run(tmp_path / "old")  # evaluations from before per-image results: reported, with a note
    rep = read(build(tmp_path / "old"), "report.md")
    assert "No per-image results" in rep and "R_{pgd->pgd} 56 seed 0" in rep.split("No per-image results")[1]
    assert "unpaired bound" in read(tmp_path / "old" / "report", "claims.md")


def test_flags_collapse_and_figures(tmp_path):
    """The collapse verdict is the training's (carried in eval.json), shown as a flag; a model whose record has no
    verdict is listed as not checked."""
    full_run(tmp_path, skip=("fgsm", "nat-fgsm-12", "pgd-pgd-1"))
    verdict = "train-batch PGD accuracy fell to 8.0% at epoch 4 from 40.0% at epoch 3"
    write_eval(tmp_path, "fgsm", paper_acc("fgsm"), train={"collapse": verdict},
               flags=[{"check": "pgd-above-fgsm", "detail": "WB-PGD 30.1% > WB-FGSM 20.0%"}])
    write_eval(tmp_path, "nat-fgsm-12", paper_acc("nat-fgsm-12"))  # collapse None: checked, none
    p = write_eval(tmp_path, "pgd-pgd-1", paper_acc("pgd-pgd-1"))
    e = json.load(open(p))
    del e["train"]["collapse"]
    json.dump(e, open(p, "w"))
    out = build(tmp_path)
    line = next(l for l in read(out, "table1.md").splitlines() if "`R_fgsm`" in l)
    assert line.rstrip(" |").endswith("pgd-above-fgsm, pgd-collapse")
    assert "pgd-collapse" not in next(l for l in read(out, "table1.md").splitlines() if "`R_{nat->fgsm} 12`" in l)
    sanity = read(out, "report.md").split("## Sanity checks")[1].split("\n## ")[0]
    assert "**R_fgsm** seed 0: `pgd-above-fgsm`: WB-PGD 30.1% > WB-FGSM 20.0%" in sanity
    assert f"**R_fgsm** seed 0: `pgd-collapse`: {verdict}" in sanity
    assert "R_{nat->fgsm} 12" not in sanity
    unchecked = next(line for line in sanity.splitlines() if "not checked" in line)
    assert "R_{pgd->pgd} 1" in unchecked and "R_fgsm" not in unchecked and "1 adversarially" in unchecked
    rep = read(out, "report.md")
    for fig in ("fig2", "fig3", "fig4", "fig5", "curves_baselines", "curves_tgt_nat", "curves_tgt_fgsm",
                "curves_tgt_pgd", "training"):
        with open(os.path.join(out, fig + ".png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"![]({fig}.png)" in rep


def test_the_paper_through_its_own_rule():
    """PROTOCOL.md's statement: as read (exact), the paper's table passes every claim but claim 3 (its WB-PGD shares
    3.8 times apart); as evidence (one training per model, 10,000 images, the declared spread), it decides claims
    1, 2, 5 and 6 and leaves 3, 4, 7, 8 and 9 inconclusive."""
    g = report.paper_run()
    read_ = [report.combine([report.judge(report.paper_value(t)[2], t.margin, t.kind) for t in c.tests])
             for c in report.CLAIMS]
    assert read_ == ["holds", "holds", "contradicted"] + ["holds"] * 6
    evidence = [report.claim_verdict(c, g)[0].split(" ")[0].rstrip(",") for c in report.CLAIMS]
    assert evidence == ["holds", "holds", "inconclusive", "inconclusive", "holds", "holds"] + ["inconclusive"] * 3


def test_figure_3_never_picks_a_flagged_row(tmp_path):
    """Figure 3 shows, per strategy, the transfer with the highest WB-PGD: a row whose WB-PGD a flag voids is no
    candidate, and the caption names it."""
    full_run(tmp_path, flags={"pgd-pgd-56": [{"check": "pgd-not-converged", "detail": "x"}]})
    get = report.group(report.load(str(tmp_path)))[1]

    def shown(voided):
        return [k for block in report.heatmaps(get, voided)["fig3"][1][0][1] for k in block]
    assert "pgd-pgd-56" in shown(())  # the paper's best WB-PGD at 56 (41.3)
    assert "pgd-pgd-56" not in shown(["pgd-pgd-56"]) and "nat-pgd-56" in shown(["pgd-pgd-56"])  # the next, 39.2
    assert "are not candidates (R_{pgd->pgd} 56)" in read(build(tmp_path), "report.md")


@contextlib.contextmanager
def drawn_texts():
    """Every non-empty text matplotlib draws meanwhile: [(figure file, text, extent, canvas width, height)], in
    pixels of the canvas it is drawn on (Agg, at the file's dpi)."""
    seen, where = [], [None]
    draw, save = matplotlib.text.Text.draw, matplotlib.figure.Figure.savefig

    def text_draw(self, renderer):
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            seen.append((where[0], self.get_text(), self.get_window_extent(renderer), renderer.width,
                         renderer.height))

    def savefig(self, path, *a, **k):
        where[0] = os.path.basename(str(path))
        return save(self, path, *a, **k)
    with mock.patch.object(matplotlib.text.Text, "draw", text_draw), \
            mock.patch.object(matplotlib.figure.Figure, "savefig", savefig):
        yield seen


def outside(seen):
    """The texts that do not lie wholly on their canvas (one pixel of slack)."""
    return [(f, t, tuple(np.round(bb.extents)), (w, h)) for f, t, bb, w, h in seen
            if bb.x0 < -1 or bb.y0 < -1 or bb.x1 > w + 1 or bb.y1 > h + 1]


def test_every_figure_text_stays_on_its_canvas(tmp_path):
    """A smoke-sized run (the long banner of departures on every figure) with WB-PGD 0.0 in every row: each text of
    every figure (titles, banner, labels, ticks, cells, legends) lies inside its canvas."""
    tiny = {"arch": "resnet8", "epochs": 2, "n_train": 380, "n_val": 20, "batch_size": 25, "limit": 400,
            "data_dir": "synthetic"}
    for k in report.ROWS:
        write_eval(tmp_path, k, {**paper_acc(k), "wb_pgd": 0.0, "wb_strong": 0.0, "worst": 0.0}, n_test=50,
                   train={**tiny, "epochs": 1 if "-" in k else 2})
    for k, (c, f, p) in report.PAPER_SRC.items():
        write_eval(tmp_path, k, {"clean": c, "wb_fgsm": f, "wb_pgd": p}, role="source", train=tiny)
    # two rows beyond the paper: their own figure, short (its colour bar's label once ran off the canvas)
    for k in ("trades", "nat-trades-1"):
        write_eval(tmp_path, k, {**paper_acc("pgd"), "wb_pgd": 0.0, "wb_strong": 0.0, "worst": 0.0}, n_test=50,
                   train=tiny)
    with drawn_texts() as seen:
        out = build(tmp_path)
    files = {f for f, *_ in seen}
    assert files >= {f + ".png" for f in ("fig2", "fig3", "fig4", "fig5", "curves_baselines", "training",
                                          "beyond")}, files
    assert not outside(seen), outside(seen)
    banner = [t for f, t, *_ in seen if f == "fig2.png" and "NOT THE PAPER'S PROTOCOL" in t]
    assert banner and "\n" in banner[0]  # wrapped, not cut off at both sides
    assert "![](fig2.png)" in read(out, "report.md")


def test_a_constant_column_is_grey_and_labelled_not_best():
    """WB-PGD 0.0 in every row (as the smoke's fig2 and fig5's FGSM panel): no row is best; its cells take the
    neutral colour and a label under it says so; the other columns keep the scale."""
    vals = {"a": {"clean": 50.0, "wb_pgd": 0.0}, "b": {"clean": 70.0, "wb_pgd": 0.0}, "c": {"clean": 60.0}}
    get = lambda k, col: (vals[k][col], 0.0, 1) if col in vals[k] else None  # noqa: E731
    fig, ax = report.plt.subplots()
    im = report.heatmap(ax, [["a", "b", "c"]], ["clean", "wb_pgd"], get)
    norm = im.get_array()
    assert norm[:, 1].mask.all() and norm[:, 0].tolist() == [0.0, 1.0, 0.5]  # grey, not yellow
    assert [(t.get_position()[0], t.get_text()) for t in ax.texts if "all equal" in t.get_text()] == \
        [(1, "all equal:\nno best")]
    report.plt.close(fig)


def test_partial_run_skips_empty_figures(tmp_path):
    write_eval(tmp_path, "nat-pgd-12", paper_acc("nat-pgd-12", extra=False), curve=False)
    write_eval(tmp_path, "pgd-pgd-12", paper_acc("pgd-pgd-12", extra=False), curve=False)
    out = build(tmp_path)
    assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == ["fig3.png", "fig4.png", "fig5.png",
                                                                        "training.png"]
    r = rows(out)
    assert r["pgd-pgd-12"]["clean"] == "81.30" and r["pgd"]["clean"] == "" and r["pgd"]["n_seeds"] == "0"
    rep = read(out, "report.md")
    assert "28 of the 30 CIFAR-10 rows have no evaluation" in rep and "fig2.png: not drawn" in rep
    assert "WB-strong" not in read(out, "table1.md")
    assert [v.split(" (")[0] for v in verdicts(tmp_path)] == ["not testable here"] * 9
    assert "**Verdict: not testable here" in read(out, "claims.md") and "| 1 |" in read(out, "report.md")


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "report.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def fails(capsys, *args):
    """report.py's main under engine.run_main, as the command line runs it: exit status and stderr lines."""
    with pytest.raises(SystemExit) as ex:
        report.run_main(lambda: report.main([str(a) for a in args]))
    return ex.value.code, capsys.readouterr().err.strip().splitlines()


def test_bad_input_exits_2_and_leaves_report(tmp_path, capsys):
    run = tmp_path / "run"
    full_run(run, skip=report.ROWS[3:])
    out = build(run)
    before = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
    code, lines = fails(capsys, "--run", run, "--out", run / "baselines")  # never replace a folder of results
    assert code == 2 and len(lines) == 1 and "is not an earlier report" in lines[0] and (run / "baselines").is_dir()
    with open(run / "baselines" / "nat_s0.eval.json", "w") as f:
        f.write('{"role": "baseline", "acc": {')  # truncated: a killed writer
    p = run_cli("--run", run)  # the real command line once: status 2, one line, no traceback
    assert p.returncode == 2 and p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1
    assert "nat_s0.eval.json" in p.stderr and "rerun its evaluation" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "empty").mkdir()
    cases = [(tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "no *.eval.json")]
    base = {"role": "baseline", "adv": "nat", "acc": {"clean": 90.0}}
    for bad, needle in (({"acc": {"clean": "high"}}, "acc.clean"), ({"curve": "up"}, "nat_s0.eval.json"),
                        ({"role": "teacher"}, "role='teacher'"), ({"flags": ["odd"]}, "'flags'")):
        cases.append(({**base, **bad}, needle))
    for case, needle in cases:
        if isinstance(case, dict):
            with open(run / "baselines" / "nat_s0.eval.json", "w") as f:
                json.dump(case, f)
        d = run if isinstance(case, dict) else case
        code, lines = fails(capsys, "--run", d, *(["--out", out] if d != tmp_path / "empty" else []))
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)} == before
    assert not (tmp_path / "empty" / "report").exists()
    # a failure while writing (not bad input) also leaves the old report whole and no temporary folder behind
    full_run(tmp_path / "ok", skip=report.ROWS[3:])
    old = report.figure
    report.figure = lambda *a: 1 / 0
    try:
        with pytest.raises(ZeroDivisionError):
            report.main(["--run", str(tmp_path / "ok"), "--out", out])
    finally:
        report.figure = old
    assert {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)} == before
    assert not [f for f in os.listdir(run) if f.startswith(".report-")]


def test_depth_flags_without_depth_and_an_unwritable_out_fail_before_drawing(tmp_path, capsys, monkeypatch):
    """--src without --depth would be ignored and the run's report rewritten; an --out folder that cannot be written
    used to pass the up-front check, draw every figure, then die. Both: one line, nothing drawn or changed."""
    run = tmp_path / "run"
    full_run(run, skip=report.ROWS[3:])
    out = build(run)
    before = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
    drawn = []
    monkeypatch.setattr(report, "figure", lambda *a, **k: drawn.append(a))
    code, lines = fails(capsys, "--run", run, "--src", "pgd", "--margin", "1")
    assert code == 2 and len(lines) == 1 and "--src --margin only apply with --depth" in lines[0], lines
    os.chmod(out, 0o555)  # an earlier report's folder, now read-only
    if os.geteuid() == 0:  # root writes anyway: the probe of that folder fails as it would for anyone else
        real = tempfile.TemporaryFile

        def probe(*a, dir=None, **k):
            if os.path.abspath(dir) == os.path.abspath(out):
                raise PermissionError(13, "Permission denied")
            return real(*a, dir=dir, **k)
        monkeypatch.setattr(tempfile, "TemporaryFile", probe)
    try:
        code, lines = fails(capsys, "--run", run, "--out", out)
    finally:
        os.chmod(out, 0o755)
    assert code == 2 and len(lines) == 1 and f"cannot write into {out}" in lines[0] and "Permission denied" in lines[0]
    assert not drawn and {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)} == before
    assert not [f for f in os.listdir(run) if f.startswith(".report-")]


# ----------------------------------------------------------------------------------------------------------
# What ran, and how it departs from the paper's protocol

def departures_section(out):
    return read(out, "report.md").split("## Departures from the paper")[1].split("### Choices")[0]


def test_paper_protocol_run_has_no_banner(tmp_path):
    full_run(tmp_path)
    out = build(tmp_path)
    for f in ("report.md", "table1.md"):
        assert "Not the paper's protocol" not in read(out, f)
    assert "- none: every recorded setting is the paper's protocol" in departures_section(out)


def test_departures_come_from_each_runs_record(tmp_path):
    """The departures are the recorded settings that differ from the protocol, each with exactly the rows it
    affects; the banner at the top of report.md and table1.md names them."""
    full_run(tmp_path, skip=("pgd", "pgd-pgd-56", "nat-nat-1"))
    write_eval(tmp_path, "pgd", paper_acc("pgd"), train={"batch_size": 128})
    write_eval(tmp_path, "pgd-pgd-56", paper_acc("pgd-pgd-56"), train={"batch_size": 128, "n_train": 380,
                                                                           "n_val": 20, "limit": 400})
    write_eval(tmp_path, "nat-nat-1", paper_acc("nat-nat-1"), n_test=50)
    out = build(tmp_path)
    deps = [line for line in departures_section(out).splitlines() if line.startswith("- ")]
    batch = next(line for line in deps if line.startswith("- batch"))
    assert "128 (paper 100)" in batch and batch.endswith("R_pgd, R_{pgd->pgd} 56 (2)")
    assert next(line for line in deps if line.startswith("- training images")).endswith(
        "380 (paper 47,500): R_{pgd->pgd} 56 (1)")
    assert next(line for line in deps if line.startswith("- test images")).endswith(
        "50 (paper 10,000): R_{nat->nat} 1 (1)")
    assert len(deps) == 4  # batch, training images, validation images, test images: nothing else departs
    for f in ("report.md", "table1.md"):
        top = read(out, f).split("\n## ")[0]
        assert "**Not the paper's protocol**" in top and "batch (clean images per step) 128" in top
        assert "test images 50 (paper 10,000)" in top and "do not reproduce the paper" in top


def test_a_smoke_sized_run_reads_as_one(tmp_path):
    """Every model of a tiny run: the banner names the architecture, epochs, images and data; every model is
    affected, so the departures say so instead of listing 34 names."""
    tiny = {"arch": "resnet8", "epochs": 2, "n_train": 380, "n_val": 20, "batch_size": 50, "limit": 400,
            "data_dir": "synthetic"}
    for k in report.ROWS:
        write_eval(tmp_path, k, paper_acc(k), train={**tiny, "epochs": 1 if "-" in k else 2}, n_test=50)
    out = build(tmp_path)
    top = read(out, "report.md").split("\n## ")[0]
    for piece in ("architecture resnet8 (paper resnet56)", "epochs 2, 1 (paper 200, 50)",
                  "training images 380 (paper 47,500)", "test images 50 (paper 10,000)", "data synthetic"):
        assert piece in top, piece
    deps = [line for line in departures_section(out).splitlines() if line.startswith("- ")]
    epochs = [line for line in deps if line.startswith("- epochs")]
    assert epochs == ["- epochs: 2 (paper 200): R_nat, R_fgsm, R_pgd (3)",
                      "- epochs: 1 (paper 50): every model but R_nat, R_fgsm, R_pgd (27)"]  # not 27 names
    assert all(line.split(": ", 2)[2].startswith("every model (30)") for line in deps if line not in epochs)


def test_what_ran_table(tmp_path):
    full_run(tmp_path, skip=("pgd",))
    for seed in (0, 1, 2):
        write_eval(tmp_path, "pgd", paper_acc("pgd"), seed=seed, train={"epochs": 20 + seed, "epoch": 7 + seed})
    out = build(tmp_path)
    for f in ("table1.md", "report.md"):
        table = read(out, f).split("## What ran")[1]
        line = next(line for line in table.splitlines() if line.startswith("| `R_pgd`"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells == ["`R_pgd`", "resnet56", "20, 21, 22", "7, 8, 9", "47,500", "2,500", "100", "10,000",
                         "0, 1, 2", report.MISSING]  # steps ran: not recorded here
        assert "| `DenseNet121` | densenet121 | 200 |" in table
    assert "`R_{nat->pgd} 1`" in read(out, "table1.md").split("## What ran")[1]


def test_terminal_shows_table1_and_the_banner(tmp_path, capsys):
    full_run(tmp_path, skip=("pgd-pgd-56",))
    write_eval(tmp_path, "pgd-pgd-56", {**paper_acc("pgd-pgd-56"), "wb_pgd": 44.0}, n_test=50)
    build(tmp_path)
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("R_{pgd->pgd} 56 "))
    assert line.split()[-2:] == ["44.0", "(41.3)"]  # WB-PGD, reproduced beside the paper's
    assert sum(line.startswith("R_") for line in printed.splitlines()) == len(report.ROWS)
    assert "Not the paper's protocol" in printed and "test images 50" in printed


# ----------------------------------------------------------------------------------------------------------
# --out: checked before the work, one writer at a time

def test_out_that_cannot_be_written_fails_before_the_work(tmp_path, capsys, monkeypatch):
    full_run(tmp_path, skip=report.ROWS[3:])
    (tmp_path / "file").write_text("not a folder")
    drawn = []
    monkeypatch.setattr(report, "build", lambda *a: drawn.append(a))
    code, lines = fails(capsys, "--run", tmp_path, "--out", tmp_path / "file" / "report")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --out") and str(tmp_path / "file") in lines[0]
    assert drawn == [] and (tmp_path / "file").read_text() == "not a folder"


def test_a_second_report_on_the_same_out_is_refused(tmp_path, capsys):
    full_run(tmp_path, skip=report.ROWS[3:])
    out = tmp_path / "report"
    with engine.output_lock(str(out)):  # another run holds it
        code, lines = fails(capsys, "--run", tmp_path, "--out", out)
    assert code == 2 and len(lines) == 1 and "being written by another run" in lines[0] and "pid" in lines[0]
    assert not out.exists()
    build(tmp_path)  # released: it runs
    assert (out / "report.md").is_file()


# ----------------------------------------------------------------------------------------------------------
# End to end: models trained by the scripts, evaluated by evaluate.py, reported by report.py

def test_report_of_real_evaluations(tmp_path, tiny_source, tiny_baseline, tiny_densenet, capsys):
    """The contract between the three stages: what training recorded reaches the report through eval.json
    alone (roles, settings, image counts, per-epoch rows, the collapse verdict), with no path rebuilt."""
    import torch
    import evaluate
    run, n = tmp_path / "run", 30
    common = ["--data-dir", "synthetic", "--device", "cpu", "--limit", str(n), "--strong-steps", "2",
              "--restarts", "1", "--curve-eps", "0", "8", "32"]
    evaluate.main(["--craft-from", str(tiny_densenet), "--out", str(run / "examples.pt"), *common])
    evaluate.main(["--ckpt", str(tiny_baseline), "--blackbox", str(run / "examples.pt"),
                   "--out", str(run / "b" / "fgsm.eval.json"), *common])
    evaluate.main(["--ckpt", str(tiny_source), "--out", str(run / "s" / "nat.eval.json"), *common])
    evaluate.main(["--ckpt", str(tiny_densenet), "--out", str(run / "d" / "dn.eval.json"), "--no-strong",
                   "--no-curve", *common[:-6]])
    capsys.readouterr()
    out = build(run)
    printed = capsys.readouterr().out
    ev = json.loads((run / "b" / "fgsm.eval.json").read_text())
    ck = torch.load(tiny_baseline)
    # the FGSM baseline lands in R_fgsm's row (its role and attack read from its checkpoint), the numbers its own
    r = rows(out)["fgsm"]
    assert r["n_seeds"] == "1" and float(r["clean"]) == pytest.approx(ev["acc"]["clean"], abs=0.005)
    assert float(r["bb_pgd"]) == pytest.approx(ev["acc"]["bb_pgd"], abs=0.005)
    rep = read(out, "report.md")
    ran = rep.split("## What ran")[1].split("\n## ")[0]
    line = next(line for line in ran.splitlines() if line.startswith("| `R_fgsm`"))
    cells = [x.strip() for x in line.strip("|").split("|")]
    assert cells == ["`R_fgsm`", "resnet8", "1", str(ck["epoch"]), str(ck["n_train"]), str(ck["n_val"]), "20",
                     str(n), "0", f"train eager (cpu); eval eager (cpu), fp32; cpu, torch {torch.__version__}"]
    assert "| `CIFAR-100 source nat` | resnet8 |" in ran and "| `DenseNet121` | densenet121 | 1 |" in ran
    # a smoke-sized run says so at the top, in the terminal too, with the values it recorded
    top = rep.split("\n## ")[0]
    assert "**Not the paper's protocol**" in top and "architecture resnet8 (paper resnet56)" in top
    assert f"test images {n} (paper 10,000)" in top and "data synthetic" in top
    assert "Not the paper's protocol" in printed and next(
        line for line in printed.splitlines() if line.startswith("R_fgsm ")).split()[1] == f"{ev['acc']['clean']:.1f}"
    deps = rep.split("### This run's settings")[1].split("###")[0]
    assert "- batch (clean images per step): 20 (paper 100): R_fgsm, CIFAR-100 source nat (2)" in deps
    assert "- batch (clean images per step): 19 (paper 100): DenseNet121 (1)" in deps
    assert "- DenseNet growth rate: 4 (paper 12): DenseNet121 (1)" in deps
    # training curves from the rows the checkpoints carry; the collapse verdict was there to read
    with open(os.path.join(out, "training.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n" and "![](training.png)" in rep
    assert "not checked" not in rep.split("## Sanity checks")[1]
    # a claim on 30 images cannot be decided
    assert all(v.startswith(("inconclusive", "not testable here")) for v in verdicts(run))

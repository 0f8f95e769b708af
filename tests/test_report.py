"""report.py on synthetic run directories: table layout, seeds, heatmap scale, claims, flags, figures, bad input.

    .venv/bin/python -m pytest tests/test_report.py
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import report  # noqa: E402

CURVE_EPS = [0, 1, 2, 4, 8, 16, 32]


def write_eval(run, key, acc, seed=0, role=None, flags=(), curve=True, log=None):
    """One eval JSON (and optionally its training log X.jsonl) as evaluate.py writes them."""
    parts = key.split("-")
    if role is None:
        role = "transfer" if len(parts) == 3 else "baseline"
    src, tgt, unf = (parts[0], parts[1], int(parts[2])) if role == "transfer" else (None, None, None)
    adv = tgt if role == "transfer" else (None if role == "blackbox" else key)
    sub = {"transfer": "transfer", "baseline": "baselines", "source": "sources", "blackbox": "blackbox"}[role]
    base = os.path.join(run, sub, f"{key}_s{seed}")
    os.makedirs(os.path.dirname(base), exist_ok=True)
    e = {"ckpt": base + ".pt", "role": role, "dataset": "cifar100" if role == "source" else "cifar10",
         "arch": "resnet56", "adv": adv, "src": src, "tgt": tgt, "unfreeze": unf, "seed": seed, "n_test": 10000,
         "eps": 8 / 256, "eps_paper_scale": 16 / 256,
         "attacks": {"fgsm": {"labels": "true"}, "pgd": {"steps": 7, "alpha": 2 / 256, "random_start": False}},
         "acc": acc, "flags": list(flags), "device": "NVIDIA H100", "torch": "2.5.0", "wall_s": 10.0,
         "date": "2025-01-01 00:00:00"}
    if curve:
        top = acc.get("clean") or 50.0
        e["curve"] = {"eps_256": CURVE_EPS, "acc": [top * 0.7 ** i for i in range(len(CURVE_EPS))]}
    with open(base + ".eval.json", "w") as f:
        json.dump(e, f)
    if log is not None:
        with open(base + ".jsonl", "w") as f:
            f.writelines(json.dumps({"epoch": i + 1, "train_batch_pgd": v, "val_adv": 40.0}) + "\n"
                         for i, v in enumerate(log))
    return base + ".eval.json"


def paper_acc(key, extra=True):
    acc = dict(zip(report.COLS, report.PAPER.get(key, (80.0, 50.0, 50.0, 30.0, 20.0))))
    if extra:
        acc.update(wb_strong=max(acc["wb_pgd"] - 1, 0), worst=max(acc["wb_pgd"] - 2, 0))
    return acc


def full_run(run, skip=(), override=None):
    """Every row with the paper's numbers (made-up ones for the 6 unshown transfers), sources and DenseNet."""
    for k in report.ROWS:
        if k not in skip:
            write_eval(run, k, {**paper_acc(k), **(override or {}).get(k, {})})
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
    assert len(keys) == 30 and keys == report.ROWS
    assert keys[:5] == ["nat", "nat-nat-1", "nat-nat-12", "nat-nat-56", "fgsm"]
    assert keys[14] == "pgd" and keys[23] == "pgd-pgd-56" and keys[24:] == [
        "fgsm-pgd-1", "fgsm-pgd-12", "fgsm-pgd-56", "pgd-fgsm-1", "pgd-fgsm-12", "pgd-fgsm-56"]
    r = rows(out)
    assert r["pgd-pgd-56"]["network"] == "R_{pgd->pgd} 56"
    assert (r["pgd-pgd-56"]["wb_pgd"], r["pgd-pgd-56"]["wb_pgd_paper"], r["pgd-pgd-56"]["wb_pgd_diff"]) == \
        ("44.00", "41.3", "+2.70")
    assert r["nat"]["clean"] == "92.50" and r["nat"]["clean_paper"] == "92.5" and r["nat"]["clean_diff"] == "+0.00"
    # a missing row and a missing cell are '–', never 0
    assert all(r["nat-pgd-1"][c] == "–" for c in report.COLS + report.EXTRA) and r["nat-pgd-1"]["clean_paper"] == "52.2"
    assert r["pgd"]["bb_fgsm"] == "–" and r["pgd"]["bb_fgsm_diff"] == "–" and r["pgd"]["bb_pgd"] == "82.10"
    # the 6 transfers the paper did not show have no paper value
    assert r["fgsm-pgd-12"]["clean_paper"] == "–" and r["fgsm-pgd-12"]["clean"] == "80.00"
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
    assert rows(out)["nat"]["clean_std"] == "–"  # one seed: the value alone
    md = read(out, "table1.md")
    line = next(l for l in md.splitlines() if "`R_pgd`" in l)
    assert "| 3 |" in line and "83.0 ± 3.6 (83.9, -0.9)" in line and "33.0 ± 3.0 (36.1, -3.1)" in line


def test_normalise():
    m = np.array([[10.0, 5.0, 7.0], [30.0, 5.0, np.nan], [20.0, 5.0, 3.0]])
    n = report.normalise(m)
    assert n[:, 0].tolist() == [0.0, 1.0, 0.5]
    assert n[:, 1].tolist() == [1.0, 1.0, 1.0]  # constant column: all best, no NaN
    assert n[0, 2] == 1.0 and n[2, 2] == 0.0 and np.isnan(n[1, 2])
    assert np.isnan(report.normalise(np.array([[np.nan], [np.nan]]))).all()


def verdicts(run):
    """Claim verdicts from a run directory: report.py's own reading and claims code, without drawing figures."""
    text = report.claims_md(report.group(report.load(str(run)))[1])[0]
    return [part.split("**Verdict: ")[1].split("**")[0] for part in text.split("## Claim ")[1:]]


def test_claims_flip(tmp_path):
    full_run(tmp_path / "a")
    v = verdicts(tmp_path / "a")
    assert v == ["holds"] * 5  # the paper's own numbers satisfy every claim
    full_run(tmp_path / "b", override={"pgd-pgd-56": {"wb_pgd": 35.0}, "nat-pgd-12": {"wb_pgd": 30.0},
                                       "pgd-nat-56": {"bb_pgd": 80.0}, "fgsm-fgsm-12": {"wb_fgsm": 80.0}})
    assert verdicts(tmp_path / "b") == ["does not hold", "holds", "does not hold", "does not hold",
                                               "does not hold"]
    full_run(tmp_path / "c", skip=("pgd-pgd-56", "fgsm-nat-12"))
    v = verdicts(tmp_path / "c")
    assert v[0].startswith("not run") and "R_{pgd->pgd} 56" in v[0]
    assert v[1].startswith("not run") and "R_{fgsm->nat} 12" in v[1] and v[2:] == ["holds"] * 3


def test_claims_seed_spread(tmp_path):
    # R_pgd->pgd 56 WB-PGD 38.0 ± 2.0 vs R_pgd 36.0 ± 0: the difference 2.0 is not beyond the spread 2.0
    full_run(tmp_path / "a", skip=("pgd-pgd-56", "pgd"))
    for s, v in enumerate((36.0, 38.0, 40.0)):
        write_eval(tmp_path / "a", "pgd-pgd-56", {**paper_acc("pgd-pgd-56"), "wb_pgd": v}, seed=s)
    write_eval(tmp_path / "a", "pgd", {**paper_acc("pgd"), "wb_pgd": 36.0})
    assert verdicts(tmp_path / "a")[0] == "does not hold"
    # a tighter spread: 38.0 ± 0.5 vs 36.0 holds
    full_run(tmp_path / "b", skip=("pgd-pgd-56", "pgd"))
    for s, v in enumerate((37.5, 38.0, 38.5)):
        write_eval(tmp_path / "b", "pgd-pgd-56", {**paper_acc("pgd-pgd-56"), "wb_pgd": v}, seed=s)
    write_eval(tmp_path / "b", "pgd", {**paper_acc("pgd"), "wb_pgd": 36.0})
    assert verdicts(tmp_path / "b")[0] == "holds"
    # shown with its uncertainty: hypot(seed std 0.5, binomial se of 38% on 10,000 images 0.485) = 0.7
    assert "38.0 ± 0.7 vs 36.0 ± 0.5" in report.claims_md(report.group(report.load(str(tmp_path / "b")))[1])[0]
    # the same numbers on 100 test images: the sampling noise (se ~4.8 points) swamps a 2-point difference
    for p in (tmp_path / "b").rglob("*.eval.json"):
        e = json.loads(p.read_text())
        p.write_text(json.dumps({**e, "n_test": 100}))
    assert verdicts(tmp_path / "b")[0] == "does not hold"


def test_flags_collapse_and_figures(tmp_path):
    full_run(tmp_path, skip=("fgsm", "nat-fgsm-12"))
    write_eval(tmp_path, "fgsm", paper_acc("fgsm"), log=[20.0, 35.0, 40.0, 8.0, 2.0],
               flags=[{"check": "pgd-above-fgsm", "detail": "WB-PGD 30.1% > WB-FGSM 20.0%"}])
    write_eval(tmp_path, "nat-fgsm-12", paper_acc("nat-fgsm-12"), log=[20.0, 30.0, 25.0, 28.0])  # no collapse
    out = build(tmp_path)
    line = next(l for l in read(out, "table1.md").splitlines() if "`R_fgsm`" in l)
    assert line.rstrip(" |").endswith("pgd-above-fgsm, pgd-collapse")
    assert "pgd-collapse" not in next(l for l in read(out, "table1.md").splitlines() if "`R_{nat->fgsm} 12`" in l)
    sanity = read(out, "report.md").split("## Sanity checks")[1].split("\n## ")[0]
    assert "**R_fgsm** seed 0: `pgd-above-fgsm`: WB-PGD 30.1% > WB-FGSM 20.0%" in sanity
    assert "fell to 8.0% at epoch 4 from 40.0% at epoch 3" in sanity
    assert "R_{nat->fgsm} 12" not in sanity
    assert "collapse not checked" in sanity  # the other adversarial runs have no log
    rep = read(out, "report.md")
    for fig in ("fig2", "fig3", "fig4", "fig5", "curves_baselines", "curves_tgt_nat", "curves_tgt_fgsm",
                "curves_tgt_pgd"):
        with open(os.path.join(out, fig + ".png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"![]({fig}.png)" in rep


def test_partial_run_skips_empty_figures(tmp_path):
    write_eval(tmp_path, "nat-pgd-12", paper_acc("nat-pgd-12", extra=False), curve=False)
    write_eval(tmp_path, "pgd-pgd-12", paper_acc("pgd-pgd-12", extra=False), curve=False)
    out = build(tmp_path)
    assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == ["fig3.png", "fig4.png", "fig5.png"]
    r = rows(out)
    assert r["pgd-pgd-12"]["clean"] == "81.30" and r["pgd"]["clean"] == "–" and r["pgd"]["n_seeds"] == "0"
    rep = read(out, "report.md")
    assert "28 of the 30 CIFAR-10 rows have no evaluation" in rep and "fig2.png: not drawn" in rep
    assert "WB-strong" not in read(out, "table1.md")
    assert [v.split(" (")[0] for v in verdicts(tmp_path)] == ["not run"] * 5
    assert "**Verdict: not run" in read(out, "claims.md") and "| 1 |" in read(out, "report.md")


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "report.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def fails(capsys, *args):
    """report.py's main under common.run_main, as the command line runs it: exit status and stderr lines."""
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

"""The report of a run: Table 1, Figures 2-5, robustness curves, the paper's claims and sanity checks, from the
evaluations of Davchev et al. 2019, "Towards Evaluating and Understanding Robust Optimisation under Transfer"
(arXiv 1905.02675).

    python report.py --run runs/paper                 # writes runs/paper/report/
    python report.py --calibrate                      # how often the claims' verdicts err, on simulated runs

Reads only the *.eval.json files under --run (evaluate.py writes X.eval.json beside checkpoint X.pt and copies
into it what the report needs of the training: settings, kept epoch, per-epoch rows, the collapse verdict). The
report is built in a temporary folder and swapped in whole: a failure never leaves half a report, and bad input
leaves an old one as it was. Several evaluations of one model with different seeds are shown as mean ± sample std
over n. The settings each run recorded are compared with the paper's protocol (PROTOCOL.md): every departure is
listed with the rows it affects, and a run that departs carries a banner saying it is not a reproduction.
"""
import argparse
import base64
import csv
import fnmatch
import functools
import glob
import json
import math
import os
import shutil
import statistics
import tempfile
import textwrap
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402  (the tables of methods, and the depth scale of `make depth`)

from common import UsageError, binomial_se, eps_str  # noqa: E402
from engine import COLLAPSE, check_writable, output_lock, run_main  # noqa: E402

# Every name comes from common's tables; the paper's lists (PAPER_*) alone make Table 1's rows, Figures 2-5 and the
# claims, so a method beyond the paper shows only below the tables' "beyond the paper" rule and in its own figure.
ADV, UNF = common.PAPER_ADV, common.PAPER_UNF
COLS = common.PAPER_COLS  # Table 1's order
EXTRA = tuple(k for k, col in common.COLUMNS.items() if not col.paper)  # beyond the paper, in the table's order
HEAD = {k: col.head for k, col in common.COLUMNS.items()}
FIG4_EXTRA = ("wb_strong", "autoattack", "worst")  # Figure 4's stronger evaluation beside Table 1's five
BEYOND = "*beyond the paper*"
MISSING = "–"
COLLAPSE_RULE = ("catastrophic overfitting (Wong et al. 2020), judged by the training itself: the PGD accuracy of a "
                 f"fixed training batch, measured every epoch, falling below {COLLAPSE:g} x its best so far once that "
                 "best is at least 10%")
CMAP = "viridis"
COLOUR = {"nat": "tab:blue", "fgsm": "tab:orange", "pgd": "tab:green"}  # curves: by source


def tkey(s, t, u):
    return f"{s}-{t}-{u}"


# Table 1 of the paper: keys in its row order ('nat' is R_nat, 'pgd-nat-12' is R_{pgd->nat} 12), values in the
# order of COLS (the paper text's header omits the first column, Clean).
PAPER = {
    "nat": (92.5, 34.7, 12.6, 20.0, 0.0), "nat-nat-1": (73.1, 33.5, 30.2, 7.4, 0.0),
    "nat-nat-12": (91.2, 41.1, 24.6, 18.4, 0.0), "nat-nat-56": (92.6, 35.0, 14.9, 18.5, 0.0),
    "fgsm": (87.1, 81.5, 82.2, 78.6, 13.5), "fgsm-nat-1": (69.0, 46.3, 54.0, 23.5, 0.0),
    "fgsm-nat-12": (89.1, 58.3, 65.1, 43.3, 2.4), "fgsm-nat-56": (91.9, 37.9, 27.9, 23.6, 0.0),
    "nat-fgsm-1": (69.3, 40.9, 38.8, 13.1, 0.0), "nat-fgsm-12": (77.3, 65.0, 60.2, 41.9, 0.5),
    "nat-fgsm-56": (88.1, 69.3, 71.3, 78.4, 1.8), "fgsm-fgsm-1": (66.6, 56.2, 60.0, 42.7, 0.2),
    "fgsm-fgsm-12": (87.2, 71.4, 76.6, 67.5, 2.9), "fgsm-fgsm-56": (85.7, 65.2, 66.3, 72.3, 1.5),
    "pgd": (83.9, 81.1, 82.1, 45.4, 36.1), "pgd-nat-1": (64.9, 62.6, 63.0, 18.0, 12.0),
    "pgd-nat-12": (84.6, 80.4, 81.6, 26.2, 12.5), "pgd-nat-56": (91.4, 42.4, 31.9, 19.9, 0.0),
    "nat-pgd-1": (52.2, 30.6, 32.8, 13.2, 0.0), "nat-pgd-12": (60.8, 31.6, 30.7, 20.0, 1.0),
    "nat-pgd-56": (81.5, 79.2, 79.9, 45.6, 39.2), "pgd-pgd-1": (61.3, 59.6, 60.0, 25.6, 20.3),
    "pgd-pgd-12": (81.3, 78.6, 79.6, 45.1, 39.1), "pgd-pgd-56": (82.6, 80.1, 80.9, 47.7, 41.3),
}
TABLE1 = list(PAPER)
ROWS = TABLE1 + [tkey(s, t, u) for s, t in (("fgsm", "pgd"), ("pgd", "fgsm")) for u in UNF]  # + 6 not shown
SRC_COLS = ("clean", "wb_fgsm", "wb_pgd")  # CIFAR-100 sources, on the CIFAR-100 test set (authors' result files)
PAPER_SRC = {"nat": (68.7, None, None), "fgsm": (62.2, 42.7, 3.5), "pgd": (55.3, 22.0, 18.1)}
PAPER_DENSENET = 93.2
DESIGN = [  # choices of this implementation that hold for every run (PROTOCOL.md, "Paper and code")
    "Inputs are [0, 1] floats and each model maps them to [-1, 1] as its first operation (the paper rescales the "
    "data): eps 8/256 here is the paper's 0.0625.",
    "'12 layers' unfreezes all of layer3 (9 blocks, 18 convs) plus the head, as the authors' code did; the paper "
    "calls it 'the last block'.",
    "Checkpoints are selected on a validation split of the training set (the authors' code), never on the test "
    "set; schedules, optimiser and epochs follow the authors' job files (the paper gives none).",
]


def protocol(e):
    """{setting: the paper protocol's value} for what this evaluation's run recorded (PROTOCOL.md)."""
    role, adv = e["role"], (e.get("tgt") if e["role"] == "transfer" else e.get("adv")) or "nat"
    want = {"arch": "densenet121" if role == "blackbox" else "resnet56", "epochs": 50 if role == "transfer" else 200,
            "batch_size": 100, "n_train": 47_500, "n_val": 2_500, "lr": 0.1,
            "wd": 1e-5 if role in ("source", "baseline") and adv != "nat" else 5e-5,
            "milestones": [0.4, 0.8] if role == "transfer" else [0.5, 0.75], "data_dir": "CIFAR",
            "n_test": 10_000, "eval_eps": 8, "eval_steps": 7}
    if adv != "nat":
        want["eps"] = 8
    if adv == "pgd":
        want.update(steps=7, random_start=False)
    if adv == "fgsm":
        want["label_fix"] = True
    if role == "transfer":
        want["freeze_bn"] = False
    if role == "blackbox":
        want["growth"] = 12
    if (e.get("attacks") or {}).get("blackbox"):
        want["bb_source"] = "densenet121"
    return want


SETTING = {"arch": "architecture", "epochs": "epochs", "batch_size": "batch (clean images per step)",
           "n_train": "training images", "n_val": "validation images", "lr": "learning rate", "wd": "weight decay",
           "milestones": "lr milestones (fractions of the epochs)", "data_dir": "data", "n_test": "test images",
           "eval_eps": "evaluation eps (/256)", "eval_steps": "evaluation PGD steps", "eps": "training eps (/256)",
           "steps": "training PGD steps", "random_start": "training PGD random start",
           "label_fix": "FGSM label-leaking fix", "freeze_bn": "frozen BatchNorm", "bb_source": "black-box source",
           "growth": "DenseNet growth rate", "train": "training record"}
SETTING.update({"src_" + k: "source's " + v for k, v in list(SETTING.items())})  # a transfer's source's settings


def recorded(e):
    """{setting: what this run recorded}, the same keys as protocol(e)."""
    t, pgd = e.get("train") or {}, (e.get("attacks") or {}).get("pgd") or {}
    have = {k: t.get(k) for k in ("arch", "epochs", "batch_size", "n_train", "n_val", "lr", "wd", "milestones", "eps",
                                  "steps", "random_start", "label_fix", "freeze_bn", "growth")}
    data = t.get("data_dir") or e.get("data_dir")
    have.update(data_dir="synthetic" if data == "synthetic" else "CIFAR", n_test=e.get("n_test"),
                eval_eps=e.get("eps_256"), eval_steps=pgd.get("steps"),
                bb_source=((e.get("attacks") or {}).get("blackbox") or {}).get("source_arch"))
    return have


def departures(evals):
    """{(setting, recorded, paper): [row labels]} for every recorded setting that differs from the protocol's.
    A setting a run did not record is not judged, except a missing training record as a whole."""
    out = {}
    for e in sorted(evals, key=order):
        diffs = [("train", "not recorded", "recorded")] if not e.get("train") else []
        src = (e.get("train") or {}).get("source")  # a transfer's source: its departures are the transfer's too
        for pre, ev in [("", e)] + ([("src_", {"role": "source", "adv": e.get("src"), "train": src})]
                                    if e["role"] == "transfer" and isinstance(src, dict) else []):
            want, have = protocol(ev), recorded(ev)
            for k, v in want.items():
                h = have.get(k)
                if h is not None and not (h == v or isinstance(v, float) and isinstance(h, (int, float))
                                          and math.isclose(h, v)):
                    diffs.append((pre + k, show_setting(h), show_setting(v)))
        for d in diffs:
            out.setdefault(d, [])
            if label(e) not in out[d]:
                out[d].append(label(e))
    return out


def show_setting(v):
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list):
        return "/".join(f"{x:g}" for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def banner(deps):
    """One line for the top of report.md and table1.md when any run departs from the paper's protocol."""
    if not deps:
        return ""
    vals = {}
    for k, h, p in deps:
        vals.setdefault(k, ([], []))
        vals[k][0].append(h)
        vals[k][1].append(p)
    what = "; ".join("no training record" if k == "train" else
                     f"{SETTING[k]} {', '.join(dict.fromkeys(h))} (paper {', '.join(dict.fromkeys(p))})"
                     for k, (h, p) in vals.items())
    return (f"> **Not the paper's protocol**: {what}. These numbers do not reproduce the paper; the departures and "
            f"the rows they affect are listed under \"Departures from the paper\".\n")


def name(key, tex=False):
    """R_nat / R_{pgd->pgd} 12, or the paper's mathtext label for figures."""
    if "-" not in key:
        return f"$R_{{{key}}}$" if tex else f"R_{key}"
    s, t, u = key.split("-")
    return rf"$R_{{{s} \rightarrow {t}}}$ {u}" if tex else f"R_{{{s}->{t}}} {u}"


def label(e):  # any evaluated model, for messages
    return {"c10": name(e["_key"]), "src": f"CIFAR-100 source {e['_key']}", "bb": "DenseNet121"}[e["_table"]]


def order(e):  # Table 1's rows (then a depth sweep's other depths, then rows beyond the paper), the CIFAR-100
    # sources, the DenseNet; by seed
    k = e["_key"]
    return ({"c10": 0, "src": 1, "bb": 2}[e["_table"]],
            (ROWS.index(k) if k in ROWS else depth_order(e) if k not in beyond_keys([k]) else 10 ** 6)
            if e["_table"] == "c10" else ADV.index(k) if k in ADV else len(ADV) if e["_table"] == "src" else 0,
            k, e["seed"])


def is_beyond(e):
    """An evaluation of a row beyond the paper (common's tables), which Figures 2-5 and the claims never read."""
    return e["_table"] == "src" and e["_key"] not in ADV or e["_table"] == "c10" and bool(beyond_keys([e["_key"]]))


def src_keys(g):
    """The CIFAR-100 sources' rows: the paper's three, then those beyond the paper that ran."""
    return list(ADV) + sorted(k for t, k in g if t == "src" and k not in ADV)


def beyond_keys(keys):
    """The keys of rows beyond the paper (an objective or a named strategy not the paper's), sorted: Table 1 shows
    them below its rule. A depth of the sweep (bK) of the paper's objectives is `make depth`'s, not a row here."""
    def paper(k):
        *st, u = k.split("-") if "-" in k else [k, 1]
        return all(common.OBJECTIVES[x].paper for x in st) and str(u) not in common.STRATEGIES
    return sorted(k for k in dict.fromkeys(keys) if k not in ROWS and not paper(k))


# ----------------------------------------------------------------------------------------------------------
# Reading the run: every file is checked before anything is written

def load(run):
    if not os.path.isdir(run):
        raise UsageError(f"run directory {run} does not exist; pass the folder the evaluations were written into "
                         f"(e.g. --run runs/paper)")
    paths = sorted(glob.glob(os.path.join(run, "**", "*.eval.json"), recursive=True))
    if not paths:
        raise UsageError(f"no *.eval.json under {run}; run the evaluation stage (evaluate.py) first or pass the "
                         f"right --run")
    evals, seen = [], {}
    for p in paths:
        try:
            with open(p) as f:
                e = check(json.load(f), p)
        except (OSError, ValueError, TypeError, AttributeError) as err:  # unreadable, not JSON, odd shapes
            raise UsageError(f"cannot read {p} ({str(err).splitlines()[0]}); delete it and rerun its evaluation")
        except Unknown as u:  # a method this code does not define: one line, and the rest of the report
            SKIPPED.append(f"{os.path.relpath(p, run)}: {u}")
            print(f"note: {SKIPPED[-1]}", flush=True)
            continue
        unknown = sorted(set(e["acc"]) - set(common.COLUMNS))
        if unknown:
            SKIPPED.append(f"{os.path.relpath(p, run)}: column {', '.join(unknown)} is in no table; register it "
                           f"in common.COLUMNS (README, \"Add your own\") to show it")
            print(f"note: {SKIPPED[-1]}", flush=True)
        k = (e["_table"], e["_key"], e["seed"])
        if k in seen:
            raise UsageError(f"{seen[k]} and {p} both evaluate {label(e)} seed {e['seed']}; delete one")
        seen[k] = p
        evals.append(e)
    return evals


class Unknown(Exception):
    """An evaluation of a method no table of common.py defines: left out of the report, with one line."""


SKIPPED = []  # those lines, for report.md


def check(e, p):
    def bad(why):
        return UsageError(f"{p} is not an evaluation this report can read ({why}); delete it and rerun evaluate.py")
    if not isinstance(e, dict) or not isinstance(e.get("acc"), dict):
        raise bad("no 'acc' object")
    role = e.get("role")
    for k in ("src", "tgt") if role == "transfer" else ("adv",) if role in ("baseline", "source") else ():
        if isinstance(e.get(k), str) and e[k] not in common.OBJECTIVES:
            raise Unknown(f"training objective {e[k]!r} is in no table; register it in common.OBJECTIVES (README, "
                          f"\"Add your own\") to report it")
    if role == "transfer" and isinstance(e.get("unfreeze"), str) and not e["unfreeze"][1:].isdigit() \
            and e["unfreeze"] not in common.STRATEGIES:
        raise Unknown(f"transfer strategy {e['unfreeze']!r} is in no table; register it in common.STRATEGIES (README, "
                      f"\"Add your own\") to report it")
    if role == "transfer":
        if e.get("src") not in common.OBJECTIVES or e.get("tgt") not in common.OBJECTIVES or not is_depth(
                e.get("unfreeze")):
            raise bad(f"transfer with src={e.get('src')!r} tgt={e.get('tgt')!r} unfreeze={e.get('unfreeze')!r}")
        e["_table"], e["_key"] = "c10", tkey(e["src"], e["tgt"], e["unfreeze"])
    elif role in ("baseline", "source"):
        if e.get("adv") not in common.OBJECTIVES:
            raise bad(f"adv={e.get('adv')!r}")
        e["_table"], e["_key"] = ("c10" if role == "baseline" else "src"), e["adv"]
    elif role == "blackbox":
        e["_table"], e["_key"] = "bb", "densenet"
    else:
        raise bad(f"role={role!r}")
    for k, v in e["acc"].items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise bad(f"acc.{k} = {v!r}")
    flags = e.get("flags") or []
    if not isinstance(flags, list) or not all(isinstance(f, dict) and "check" in f for f in flags):
        raise bad("'flags' must be a list of {check, detail}")
    cv = e.get("curve") or {}
    if not isinstance(e.get("seed") or 0, int):
        raise bad(f"seed={e.get('seed')!r}")
    if not isinstance(e.get("attacks") or {}, dict) or not all(isinstance(v, (int, float)) for v in list(
            cv.get("eps_256") or []) + [y for y in cv.get("acc") or [] if y is not None]):
        raise bad("'attacks' must be an object and 'curve' hold numbers")
    t = e.get("train")
    if t is not None and (not isinstance(t, dict) or not isinstance(t.get("rows") or [], list)
                          or not all(isinstance(r, dict) for r in t.get("rows") or [])):
        raise bad("'train' must be an object with a list of per-epoch rows")
    e["flags"], e["seed"], e["_path"] = flags, e.get("seed") or 0, p
    pi = e.get("per_image")
    if pi is not None:  # the per-image bits pair the comparisons: they must be these accuracies' own
        if not isinstance(pi, dict) or pi.get("n") != e.get("n_test") or not isinstance(pi.get("correct"), dict):
            raise bad("'per_image' must hold n (= n_test) and the bits of each column")
        for col, b64 in pi["correct"].items():
            try:
                ok = bits(e, col) if isinstance(b64, str) and len(base64.b64decode(b64)) == -(-pi["n"] // 8) else None
            except ValueError:  # binascii.Error is one
                ok = None
            if ok is None or (e["acc"].get(col) is not None and abs(100 * ok.sum() / max(1, pi["n"]) - e["acc"][col])
                              > 1e-6):
                raise bad(f"per_image.correct.{col} does not decode to acc.{col}")
    eps, eps2 = e.get("eps"), e.get("eps_paper_scale")  # a flag of the file itself: it voids every claim it feeds
    if isinstance(eps, (int, float)) and isinstance(eps2, (int, float)) and abs(eps2 - 2 * eps) > 1e-9:
        flags.append({"check": "eps-scale", "detail": f"eps {eps} on [0,1] but eps_paper_scale {eps2}, not twice it"})
    return e


# ----------------------------------------------------------------------------------------------------------
# Tables

def stat(es, col):
    """(mean, sample std, n, se) over the seeds that have this column, or None. se is the binomial standard error
    (common.binomial_se) of an accuracy measured on the fewest test images among them: the test set's own
    sampling noise, which seeds do not show since every seed meets the same images."""
    v = [e["acc"][col] for e in es if e["acc"].get(col) is not None]
    if not v:
        return None
    m, n_test = statistics.mean(v), min(e.get("n_test") or 10_000 for e in es)
    return m, statistics.stdev(v) if len(v) > 1 else 0.0, len(v), binomial_se(m, n_test)


def fmt(s, paper=None, nrow=1):
    """One value, or mean ± std (with n when it differs from the row's), then (paper, difference) if known."""
    txt = MISSING if s is None else f"{s[0]:.1f}" if s[2] == 1 else f"{s[0]:.1f} ± {s[1]:.1f}" + (
        f" (n={s[2]})" if s[2] != nrow else "")
    return txt if paper is None else txt + (f" ({paper:.1f}, {s[0] - paper:+.1f})" if s else f" ({paper:.1f})")


def md_table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]) + "\n"


def steps_text(e):
    """How one evaluation's and its training's steps ran, as recorded (engine.steps_ran): captured or eager and why,
    the cohort, the precision of the attacks, the device and versions. None where nothing was recorded."""
    def how(r):
        return (("captured" if r["steps"] == "captured" else f"eager ({r['why']})")
                + (f" (cohort {r['cohort']})" if r.get("cohort", 1) > 1 else ""))
    train = (e.get("train") or {}).get("steps_ran") or []  # an entry per process and cohort: a resumed run has several
    ev = e.get("steps_ran")
    parts = []
    if train:
        parts.append("train " + ", ".join(how(r) if len(train) == 1 else f"epochs {r['epochs'][0]}-{r['epochs'][1]} "
                                          f"{how(r)}" for r in train))
    if ev:
        parts.append(f"eval {how(ev)}, {ev.get('precision')}")
    cuda = lambda r: f", CUDA {r['cuda']}" if r["device"] != "cpu" else ""  # noqa: E731
    parts += dict.fromkeys(f"{r['device']}, torch {r['torch']}{cuda(r)}" for r in train + ([ev] if ev else []))
    return "; ".join(parts).replace("|", "/") or None  # a table cell


def what_ran(g):
    """Per model that ran, what its runs recorded (several seeds: their distinct values)."""
    def vals(es, get):
        v = [get(e) for e in es]
        return ", ".join(dict.fromkeys(show_setting(x) for x in v if x is not None)) or MISSING

    def tr(field):
        return lambda e: (e.get("train") or {}).get(field)
    rows = []
    c10 = ROWS + beyond_keys(k for t, k in g if t == "c10")
    for tk in [("c10", k) for k in c10] + [("src", k) for k in src_keys(g)] + [("bb", "densenet")]:
        es = g.get(tk)
        if es:
            rows.append([f"`{label(es[0])}`"] + [vals(es, tr(f)) for f in ("arch", "epochs", "epoch", "n_train",
                                                                          "n_val", "batch_size")]
                        + [vals(es, lambda e: e.get("n_test")), ", ".join(str(e["seed"]) for e in es),
                           vals(es, steps_text)])
    return md_table(["Network", "arch", "epochs", "kept epoch", "training images", "validation images", "batch",
                     "test images", "seeds", "steps ran"], rows) if rows else "no evaluations\n"


def tables(g, flags, extra):
    """table1.md's text and table1.csv's rows (every column; a missing value is MISSING in the text, empty in the
    CSV, so that numeric columns stay numeric)."""
    md, rows, beyond = [], [], beyond_keys(k for t, k in g if t == "c10")
    for k in ROWS + beyond:
        es, paper, fl = g.get(("c10", k), []), PAPER.get(k, (None,) * 5), flags.get(("c10", k), [])
        if beyond and k == beyond[0]:  # the rule: what follows is no row of the paper's Table 1
            md.append([BEYOND] + [""] * (len(COLS + extra) + 2))
        md.append([f"`{name(k)}`", len(es)] + [fmt(stat(es, c), p, len(es)) for c, p in zip(COLS, paper)]
                  + [fmt(stat(es, c), None, len(es)) for c in extra] + [", ".join(fl)])
        r = {"network": name(k), "key": k, "n_seeds": len(es)}
        for c, p in zip(COLS + EXTRA, paper + (None,) * len(EXTRA)):
            s = stat(es, c)
            r.update({c: f"{s[0]:.2f}" if s else "", c + "_std": f"{s[1]:.2f}" if s and s[2] > 1 else "",
                      c + "_n": s[2] if s else 0})
            if c in COLS:
                r[c + "_paper"] = "" if p is None else f"{p:.1f}"
                r[c + "_diff"] = f"{s[0] - p:+.2f}" if s and p is not None else ""
        rows.append({**r, "flags": " ".join(fl)})
    src = []
    for k in src_keys(g):
        es = g.get(("src", k), [])
        if k not in ADV and k == src_keys(g)[len(ADV)]:
            src.append([BEYOND] + [""] * (len(SRC_COLS) + 2))
        src.append([f"`{k}`", len(es)] + [fmt(stat(es, c), p, len(es)) for c, p in
                                          zip(SRC_COLS, PAPER_SRC.get(k, (None,) * 3))]
                   + [", ".join(flags.get(("src", k), []))])
    dn = g.get(("bb", "densenet"), [])
    text = ("# Table 1: CIFAR-10 test accuracy (%)\n\nEach cell: reproduced (mean ± sample std over the n seeds "
            "when n > 1: in the tables ± is always the seed spread) (the paper's value, reproduced − paper); "
            f"{MISSING} = not run. The last 6 rows" + (" above the rule" if beyond else "")
            + " are transfers the paper did not show"
            + (f"; below the rule ({BEYOND}), methods beyond the paper (common's tables)" if beyond else "")
            + ".\n\n"
            + md_table(["Network", "n"] + [HEAD[c] for c in COLS + extra] + ["flags"], md)
            + "\n## CIFAR-100 sources (CIFAR-100 test set; paper: the authors' result files)\n\n"
            + md_table(["Source", "n"] + [HEAD[c] for c in SRC_COLS] + ["flags"], src)
            + f"\nDenseNet121 (black-box source), CIFAR-10 clean: {fmt(stat(dn, 'clean'), PAPER_DENSENET, len(dn))}"
            + (f" (n={len(dn)})" if len(dn) > 1 else "") + "\n"
            + "\n## What ran\n\nAs each run recorded it (the paper: ResNet56; 200 epochs for sources, baselines and "
              "the DenseNet121, 50 for transfers; 47,500 training and 2,500 validation images; batch 100; 10,000 test "
              "images).\n\n" + what_ran(g))
    return text, rows


# ----------------------------------------------------------------------------------------------------------
# Comparisons: the one statistical test behind every verdict (PROTOCOL.md, "How the report judges a run").
# A comparison is a difference D = lhs - rhs in percentage points between weighted sums of rows' accuracies,
# measured on the same test images: its test-set noise is paired, image by image (McNemar); the spread between
# trainings (seeds) is added to it, declared (one seed) or measured (several). compare() is the entry point;
# claims and other parts call it.

ALPHA = 0.025  # per side: one comparison's interval is a 95% two-sided one
# One model's accuracy moves between trainings (seeds) by this much (sample standard deviation, points), in every
# column: the spread a one-seed verdict assumes (report.py --seed-sd), declared because one seed cannot measure
# it. PROTOCOL.md gives its source; a run with rows of 2 or more seeds measures it instead (seed_spread).
SEED_SD = 1.0
FLOOR = 5.0  # points: a row within this of 0% or 100% is pressed against the bound, no measure of spread
POWER = 0.8  # the minimum detectable effect of each comparison is at this power
BLOCKS = {  # flag -> the columns whose numbers it voids (common.COLUMNS' voided_by); a flag not listed voids the row
    f: tuple(k for k, col in common.COLUMNS.items() if f in col.voided_by)
    for f in dict.fromkeys(f for col in common.COLUMNS.values() for f in col.voided_by)}
ONE_SEED = "1 seed: the seed spread is the declared one, not measured"
NOT_TESTABLE = "not testable here"


@functools.lru_cache(maxsize=None)  # the calibration asks for the same few thousands of times
def t_quantile(p, df=None):
    """x with P(X <= x) = p (p >= 0.5) for Student's t with integer df >= 1, or the normal when df is None. The
    t distribution function is the exact finite series of Abramowitz & Stegun 26.7.3-4, inverted by bisection
    (no scipy): t_quantile(0.975, 2) = 4.303, (0.975, 9) = 2.262, (0.975) = 1.960."""
    if df is None:
        return statistics.NormalDist().inv_cdf(p)

    def cdf(x):
        th = math.atan(x / math.sqrt(df))
        c2, term = math.cos(th) ** 2, (math.cos(th) if df % 2 else 1.0)
        tot = term if df != 1 else 0.0
        for k in range(1, (df - 1) // 2 if df % 2 else df // 2):
            term *= c2 * (2 * k / (2 * k + 1) if df % 2 else (2 * k - 1) / (2 * k))
            tot += term
        a = 2 / math.pi * (th + math.sin(th) * tot) if df % 2 else math.sin(th) * tot  # P(|T| < x)
        return (1 + a) / 2
    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(100):
        lo, hi = ((lo + hi) / 2, hi) if cdf((lo + hi) / 2) < p else (lo, (lo + hi) / 2)
    return (lo + hi) / 2


def bits(e, col):
    """Which test images evaluation e got right in column col (a bool array), or None: files from before
    evaluate.py recorded them. Decoded once per evaluation (e["_bits"])."""
    cache = e.setdefault("_bits", {})
    if col not in cache:
        pi = e.get("per_image") or {}
        s = (pi.get("correct") or {}).get(col)
        cache[col] = None if s is None else np.unpackbits(np.frombuffer(base64.b64decode(s), np.uint8),
                                                          count=pi["n"]).astype(bool)
    return cache[col]


@dataclass
class Comparison:
    """One comparison's result: D = lhs - rhs (points, the mean over the seeds used), its standard error, the 95%
    interval D -/+ q se, the verdict, the seeds used, the smallest distance of the true D from the margin that
    it decides with 80% power (mde), and notes (e.g. ONE_SEED; an unpaired bound)."""
    verdict: str  # holds | contradicted | inconclusive | not testable here (why)
    lhs: float = None
    rhs: float = None
    estimate: float = None
    se: float = None
    lo: float = None
    hi: float = None
    seeds: int = 0
    notes: list = field(default_factory=list)
    mde: float = None

    @property
    def one_seed(self):
        return self.seeds == 1


def judge(d, margin, kind, h=0.0, c=None):
    """The verdict on an estimate d: "holds" is judged on d -/+ h, "contradicted" on d -/+ c (c >= h: wider when
    any one of k comparisons contradicts a claim, Bonferroni; c = h by default). greater: D > margin;
    equivalent: |D| < margin, two one-sided tests."""
    c = h if c is None else c
    if kind == "greater":
        return "holds" if d - h > margin else "contradicted" if d + c < margin else "inconclusive"
    if kind == "equivalent":
        return "holds" if -margin < d - h and d + h < margin else \
            "contradicted" if d - c >= margin or d + c <= -margin else "inconclusive"
    raise ValueError(f"unknown kind {kind!r}")


def combine(verdicts):
    """Several verdicts as one, in the one precedence of the report: not testable here if any is, contradicted
    if any is, holds if all hold, inconclusive otherwise (and not testable here when there is none)."""
    if not verdicts or any(v.startswith(NOT_TESTABLE) for v in verdicts):
        return NOT_TESTABLE
    return "contradicted" if "contradicted" in verdicts else "holds" if set(verdicts) == {"holds"} else \
        "inconclusive"


def blocking(e, col):
    """The flags of evaluation e that void its number in column col (BLOCKS)."""
    return [f["check"] for f in e["flags"] if col in BLOCKS.get(f["check"], (col,))]


def seed_spread(g, col, declared=SEED_SD):
    """(sd, df, how) of one model's accuracy in column col between trainings. Measured when the run has rows with
    2 or more seeds: the sample variance within each such row, pooled over the run's CIFAR-10 rows (df = the sum
    of their seeds - 1), so that 3 seeds of many rows give a well-known spread where a single comparison's 3 seeds
    give 2 degrees of freedom. Left out of the pool: flagged numbers, and rows within FLOOR points of 0% or 100%
    (pressed against the bound, they would shrink the pool). Otherwise the declared sd (df None: taken as known)."""
    ss, df, rows = 0.0, 0, 0
    for (tab, _), es in g.items():
        v = [e["acc"][col] for e in es if tab == "c10" and e["acc"].get(col) is not None and not blocking(e, col)]
        if len(v) > 1 and FLOOR < np.mean(v) < 100 - FLOOR:
            ss += (len(v) - 1) * np.var(v, ddof=1)
            df += len(v) - 1
            rows += 1
    if not df:
        return declared, None, f"{declared:g} point{'s' * (declared != 1)} per model, declared (no row measures it)"
    return math.sqrt(ss / df), df, f"{math.sqrt(ss / df):.2f} points per model, measured: pooled over {rows} rows " \
                                   f"({df} df)"


def _test(nums, sides, margin, kind, alpha, dens=(), k=1, spread=None):
    """nums: [(evals of one row over seeds, column, the row's name)]; sides(values of nums) -> (lhs, rhs) in points;
    dens: indices of nums that must be measurably above 0 (a share's baseline, a fraction's); k: "contradicted" is
    judged at alpha / k (any one of k comparisons contradicts a claim); spread: (sd, df, how) of the seed spread
    per model (seed_spread), or None: the declared SEED_SD with one seed, the comparison's own seeds with more."""
    missing = [f"{nm} {HEAD[col]}" for ev, col, nm in nums if not ev or any(e["acc"].get(col) is None for e in ev)]
    if missing:
        return Comparison(f"{NOT_TESTABLE} (missing: {', '.join(dict.fromkeys(missing))})")
    flagged = [f"{nm} seed {e['seed']}: `{fl}`" for ev, col, nm in nums for e in ev for fl in blocking(e, col)]
    if flagged:
        return Comparison(f"{NOT_TESTABLE} (flagged: {'; '.join(dict.fromkeys(flagged))})")
    seeds = sorted(set.intersection(*({e["seed"] for e in ev} for ev, _, _ in nums)))
    if not seeds:
        return Comparison(f"{NOT_TESTABLE} (no seed common to {', '.join(dict.fromkeys(n for *_, n in nums))})")
    used = [[next(e for e in ev if e["seed"] == s) for s in seeds] for ev, _, _ in nums]  # [number][seed]
    acc = [statistics.mean(e["acc"][col] for e in u) for u, (_, col, _) in zip(used, nums)]
    notes, s_n = [], len(seeds)
    for i in dens:  # a share of nothing is undefined: its baseline must be measurably above 0 (and at every seed)
        n = min(e.get("n_test") or 10_000 for e in used[i])
        if acc[i] - t_quantile(1 - alpha) * binomial_se(acc[i], n) <= 0 or \
                min(e["acc"][nums[i][1]] for e in used[i]) <= 0:
            return Comparison(f"{NOT_TESTABLE} ({nums[i][2]} {HEAD[nums[i][1]]} is {acc[i]:.1f}%, not measurably "
                              f"above 0: no robustness to take a fraction of)")
    per_seed = [sides([u[j]["acc"][col] for u, (_, col, _) in zip(used, nums)]) for j in range(len(seeds))]
    d = [l - r for l, r in per_seed]
    # the weight of each number in D, at the mean accuracies (exact for sums, the delta method for a share)
    h, g = 1e-4, []
    for i, a in enumerate(acc):
        (l1, r1), (l0, r0) = sides(acc[:i] + [a + h] + acc[i + 1:]), sides(acc[:i] + [a - h] + acc[i + 1:])
        g.append((l1 - r1 - l0 + r0) / (2 * h))
    ns = {e.get("n_test") for u in used for e in u} | {(e.get("per_image") or {}).get("n") for u in used for e in u}
    same = len(ns) == 1 and len({e.get("data_dir") for u in used for e in u}) == 1
    b = [[bits(e, col) for e in u] for u, (_, col, _) in zip(used, nums)] if same else None
    if b and all(x is not None for bs in b for x in bs):
        # paired over images: D is the mean of z_j = sum_i g_i * (image j right in number i, mean over seeds);
        # two images at each extreme of z, as Agresti-Coull adds two successes and two failures: 0 disagreements
        # in 50 images is no proof of none (the exact 97.5% bound is 7 points; this gives 7.3)
        z = 100 * sum(gi * np.mean(bs, axis=0) for gi, bs in zip(g, b))
        ext = 100 * np.array([sum(max(gi, 0) for gi in g), sum(min(gi, 0) for gi in g)])
        zz = np.concatenate([z, ext, ext])
        se_test = float(zz.std() / math.sqrt(len(zz)))
    else:  # no per-image results: the bound sum |g_i| se_i holds whatever the correlation between the rows
        n = min(e.get("n_test") or 10_000 for u in used for e in u)
        se_test = sum(abs(gi) * binomial_se(a, n) for gi, a in zip(g, acc))
        notes.append("no per-image results to pair: unpaired bound")
    # The seed part. Rows are separate trainings, but transfers from one source share that source's training:
    # the sd of sum g_i x_i is sd * sqrt(G), G the larger of sum g_i^2 (independent trainings) and the sum over
    # sources of (sum of their g_i)^2 (a source's training moving all its transfers alike): whichever way a
    # transfer's spread splits between its source and its own training, its variance lies between the two.
    grp = {}
    for gi, (ev, _, nm) in zip(g, nums):
        key = ("src", ev[0]["src"]) if ev[0].get("role") == "transfer" else ("row", nm)
        grp[key] = grp.get(key, 0.0) + gi
    G = max(sum(gi * gi for gi in g), sum(v * v for v in grp.values()))
    if spread is None and s_n > 1:  # the comparison's own seeds: the spread of the per-seed D (2 df with 3 seeds)
        se_seed, df = statistics.stdev(d) / math.sqrt(s_n), s_n - 1
    else:
        sd, df, _ = spread or (SEED_SD, None, None)
        se_seed = sd * math.sqrt(G / s_n)
    # the seeds' spread also carries part of the image noise, counted twice here: it errs towards inconclusive
    est, se = statistics.mean(d), math.hypot(se_seed, se_test)
    qh, qc = t_quantile(1 - alpha, df), t_quantile(1 - alpha / k, df)
    notes = ([ONE_SEED] if s_n == 1 else []) + notes
    return Comparison(judge(est, margin, kind, qh * se, qc * se), statistics.mean(l for l, _ in per_seed),
                      statistics.mean(r for _, r in per_seed), est, se, est - qh * se, est + qh * se, s_n, notes,
                      (qh + t_quantile(POWER, df)) * se)


def compare(lhs, rhs, margin=0.0, kind="greater", alpha=ALPHA, k=1, spread=None):
    """Is lhs - rhs > margin (kind "greater", one-sided), or |lhs - rhs| < margin (kind "equivalent", two one-sided
    tests)? lhs and rhs: [(weight, evals, column)] or [(weight, evals, column, the row's name)], evals one row's
    evaluations over its seeds (report.load's dicts, e.g. group(evals)[0][("c10", "pgd")]), column one of COLS +
    EXTRA; each side is the weighted sum of the accuracies (%). alpha is per side (0.025: a 95% interval); "holds"
    is judged at alpha, "contradicted" at alpha / k when any one of k comparisons contradicts. spread: the seed
    spread per model, (sd, df, how) as seed_spread gives it; None: the declared SEED_SD with one seed, the spread
    of the per-seed D with several. Returns a Comparison; a row missing or flagged (BLOCKS) makes it "not testable
    here"."""
    terms = [(w, *t[1:3], t[3] if len(t) > 3 else label(t[1][0]) if t[1] else "a row")
             for side, sign in ((lhs, 1), (rhs, -1)) for t in side for w in [sign * t[0]]]
    n = len(lhs)

    def sides(v):
        return (sum(w * x for (w, *_), x in zip(terms[:n], v)), -sum(w * x for (w, *_), x in zip(terms[n:], v[n:])))
    return _test([t[1:] for t in terms], sides, margin, kind, alpha, k=k, spread=spread)

# ----------------------------------------------------------------------------------------------------------
# The paper's claims as the paper states them (PROTOCOL.md, "The paper's claims"). Each is one hypothesis, stated
# before any number, tested as one or more comparisons (Test). Margins the paper does not give come from a
# measured or cited quantity, never from Table 1, and are fixed here, not tuned on any run.

# "Similar", "almost complete", "close to": within what two trainings of one and the same model differ by, 95% of
# the time, on the paper's 10,000 test images: 1.96 x sqrt(2 x SEED_SD^2 + 2 x (binomial se of 50% on 10,000)^2).
# Anything closer the paper's own table (one training per model) could not tell apart.
SIMILAR = round(t_quantile(0.975) * math.sqrt(2 * SEED_SD ** 2 + 2 * binomial_se(50, 10_000) ** 2), 1)
# "Proportionally the same", "successful transfer": a ratio within 0.80-1.25, the bounds of equivalence testing in
# bioequivalence (FDA 2001, "Statistical Approaches to Establishing Bioequivalence"); below 0.80 is "not the same".
RATIO = 0.8


def _mean3(key, col, f=1.0):
    return [(f / 3, key.format(u), col) for u in UNF]


@dataclass
class Test:
    """One comparison: D = lhs - rhs against margin. Sides are [(weight, row, column)]; shares (claim 3): each
    side divided by its baseline (row, column), in % of it; base: a (row, column) the comparison takes a fraction
    of, which must be measurably above 0 (as a share's baseline)."""
    text: str
    kind: str
    margin: float
    lhs: list
    rhs: list
    shares: tuple = None
    base: tuple = None


@dataclass
class Claim:
    title: str
    quote: str
    where: str
    reading: str  # the hypothesis, as tested
    tests: list
    effect: float = None  # claim 1: the paper's effect, reported beside the interval (not tested)


CLAIMS = [
    Claim("R_{pgd->pgd} 56 beats R_pgd against WB-PGD (the paper: by +5.2 points, 41.3 vs 36.1)",
          "In fact, robust initialisation for R_{pgd→pgd} achieves 5.2% accuracy improvement against WB PGD attacks",
          "Sec. 3.2; Table 1: 41.3 vs 36.1",
          "D = R_{pgd->pgd} 56 − R_pgd on WB-PGD > 0 (an improvement); the size of the effect is "
          "reported beside it (its interval against the paper's +5.2), not tested: the paper gives no uncertainty "
          "for its +5.2 from which a smaller effect could be called a contradiction",
          [Test("R_{pgd->pgd} 56 − R_pgd, WB-PGD", "greater", 0, [(1, "pgd-pgd-56", "wb_pgd")],
                [(1, "pgd", "wb_pgd")])], effect=5.2),
    Claim("PGD sources preserve more black-box robustness than FGSM sources under transfer",
          "Unlike the case in the absence of transfer, defence mechanisms developed using PGD are more likely to "
          "preserve the robustness of the learned features against BB attacks when used on the different task.",
          "Sec. 3.1",
          "natural target training, mean over the strategies 1, 12, 56: R_{pgd->nat} above R_{fgsm->nat} on "
          "BB-FGSM and on BB-PGD (margin 0: a direction; the baselines R_pgd and R_fgsm are equal against BB in the "
          "paper, so absolute accuracies compare the robustness preserved)",
          [Test(f"mean R_{{pgd->nat}} − mean R_{{fgsm->nat}}, {HEAD[c]}", "greater", 0, _mean3("pgd-nat-{}", c),
                _mean3("fgsm-nat-{}", c)) for c in ("bb_fgsm", "bb_pgd")]),
    Claim("PGD and FGSM sources transfer proportionally the same share of their white-box robustness",
          "However, both approaches seem to transfer proportionally the same amount of the achieved robustness "
          "against WB attacks.", "Sec. 3.1",
          f"the share of the baseline's WB accuracy kept by natural target training, mean over 1, 12, 56 (mean "
          f"R_{{pgd->nat}} as % of R_pgd, mean R_{{fgsm->nat}} as % of R_fgsm): their ratio within "
          f"{RATIO:.2f}-{1 / RATIO:.2f} on WB-FGSM and on WB-PGD, as two one-sided tests each (share_pgd > "
          f"{RATIO:.2f} share_fgsm and share_pgd < {1 / RATIO:.2f} share_fgsm); not testable when a baseline's "
          "accuracy is not measurably above 0",
          [t for c in ("wb_fgsm", "wb_pgd") for t in (
              Test(f"share of R_pgd − {RATIO:.2f} × share of R_fgsm, {HEAD[c]}", "greater", 0,
                   _mean3("pgd-nat-{}", c), _mean3("fgsm-nat-{}", c, RATIO), shares=(("pgd", c), ("fgsm", c))),
              Test(f"{1 / RATIO:.2f} × share of R_fgsm − share of R_pgd, {HEAD[c]}", "greater", 0,
                   _mean3("fgsm-nat-{}", c, 1 / RATIO), _mean3("pgd-nat-{}", c), shares=(("fgsm", c), ("pgd", c))))]),
    Claim("With natural target training, a PGD source unfrozen at 12 keeps nearly all its BB-PGD robustness; "
          "56 loses much of it",
          "Regardless, unfreezing the final block of ResNet56 resulted in an almost complete transfer of the "
          "defence against BB attacks.", "Sec. 3.1; the 56 part from Table 1: 31.9 vs 82.1",
          f"R_{{pgd->nat}} 12 no more than {SIMILAR:g} points below R_pgd on BB-PGD ('almost complete': within "
          f"what two trainings of one model differ by), and R_{{pgd->nat}} 56 below {RATIO:.2f} × R_pgd (outside "
          f"the band of 'the same')",
          [Test("R_{pgd->nat} 12 − R_pgd, BB-PGD", "greater", -SIMILAR, [(1, "pgd-nat-12", "bb_pgd")],
                [(1, "pgd", "bb_pgd")]),
           Test(f"{RATIO:.2f} × R_pgd − R_{{pgd->nat}} 56, BB-PGD", "greater", 0, [(RATIO, "pgd", "bb_pgd")],
                [(1, "pgd-nat-56", "bb_pgd")], base=("pgd", "bb_pgd"))]),
    Claim("A natural source is not made robust by adversarially training the last stage only (R_{nat->pgd} 12)",
          "Training R_{nat→pgd} by unfreezing the last block of layers only did not result in successful transfer, "
          "even though we used adversarially perturbed examples during training.", "Sec. 3.2",
          f"R_{{nat->pgd}} 12 below {RATIO:.2f} × R_pgd's WB-PGD accuracy ('not successful': outside the band of "
          f"'the same' as the baseline it would have to match); not testable when R_pgd's WB-PGD is not measurably "
          f"above 0",
          [Test(f"{RATIO:.2f} × R_pgd − R_{{nat->pgd}} 12, WB-PGD", "greater", 0, [(RATIO, "pgd", "wb_pgd")],
                [(1, "nat-pgd-12", "wb_pgd")], base=("pgd", "wb_pgd"))]),
    Claim("FGSM in source and target (fgsm->fgsm) does worse against WB attacks than R_fgsm",
          "Finally, R_{adv→adv} seems to have a negative effect when using non-iterative methods.", "Sec. 3.2",
          "R_{fgsm->fgsm} at each of 1, 12, 56 below R_fgsm on WB-FGSM and on WB-PGD (margin 0: a direction)",
          [Test(f"R_fgsm − R_{{fgsm->fgsm}} {u}, {HEAD[c]}", "greater", 0, [(1, "fgsm", c)],
                [(1, tkey("fgsm", "fgsm", u), c)]) for u in UNF for c in ("wb_fgsm", "wb_pgd")]),
    Claim("Without transfer, PGD and FGSM training are equally robust against BB attacks",
          "Using PGD or FGSM samples during training performed equally well against BB attacks.", "Sec. 3.1",
          f"R_pgd and R_fgsm equal within ±{SIMILAR:g} points on BB-FGSM and on BB-PGD (two one-sided tests each)",
          [Test(f"R_pgd − R_fgsm, {HEAD[c]}", "equivalent", SIMILAR, [(1, "pgd", c)], [(1, "fgsm", c)])
           for c in ("bb_fgsm", "bb_pgd")]),
    Claim("Robust initialisation with PGD target training keeps black-box robustness similar to the baseline's",
          "[...] when combined with robust optimisation applied on the target network, it improved performance in "
          "the context of WB attacks while maintaining similar robustness as the baselines' against BB attacks.",
          "Sec. 3.2",
          f"R_{{pgd->pgd}} 56 (the row of the +5.2) and R_pgd equal within ±{SIMILAR:g} points on BB-FGSM and on "
          f"BB-PGD (two one-sided tests each)",
          [Test(f"R_{{pgd->pgd}} 56 − R_pgd, {HEAD[c]}", "equivalent", SIMILAR, [(1, "pgd-pgd-56", c)],
                [(1, "pgd", c)]) for c in ("bb_fgsm", "bb_pgd")]),
    Claim("Training the last stage only (12) comes close to the best result",
          "A combination of freezing low-level features and training the final block of ResNet56 provides a good "
          "trade off that is both close to the best achieved results while requiring a lot less training time.",
          "Sec. 4 (and Sec. 3.2: \"Unfreezing the final block of ResNet gets close to the baseline results\")",
          f"one-sided, as 'close to the best' reads: R_{{pgd->pgd}} 12 no more than {SIMILAR:g} points below "
          f"R_{{pgd->pgd}} 56 (Table 1's best WB-PGD) on WB-PGD (non-inferiority; above it is no failure)",
          [Test("R_{pgd->pgd} 12 − R_{pgd->pgd} 56, WB-PGD", "greater", -SIMILAR, [(1, "pgd-pgd-12", "wb_pgd")],
                [(1, "pgd-pgd-56", "wb_pgd")])]),
]
CLAIMS_RULE = f"""\
**The rule.** Each comparison is a difference D = lhs − rhs in percentage points (for claim 3, of shares of a
baseline's accuracy), tested against the claim's margin. Every model is evaluated on the same test images, so
the comparison is paired image by image; the spread between trainings (seeds) is added to it.

- *Seeds.* A comparison uses the seeds that every row it needs was run with; D is computed per seed and averaged.
- *Test images.* D is the mean over the N images of a per-image score: for one row against another, +1 where
  only the first is right, −1 where only the second is, 0 where they agree (McNemar's paired comparison); for a
  weighted sum, the same sum of the per-image results (a share: linearised at the measured accuracies, the delta
  method). Its standard error is the score's standard deviation over images / √N, with two images added at
  each extreme (as Agresti–Coull adds two successes and two failures: no disagreement on 50 images is no proof
  of none). Evaluations without per-image results (written before evaluate.py recorded
  them) get instead Σ|weight| × the binomial standard error of each accuracy (Agresti–Coull), a bound that holds
  whatever the correlation between the rows and is never smaller than the paired value: noted in the table.
- *Seeds' spread.* Every model's accuracy moves from one training to the next by a spread σ per model. **With one
  seed σ cannot be measured: it is declared**, {SEED_SD:g} point per model by default (`report.py --seed-sd`;
  PROTOCOL.md says where it comes from), and the verdict says so ("{ONE_SEED}"). **With 2 or more seeds of any
  row σ is measured**: the variance between seeds within each row, pooled over every CIFAR-10 row of the run in
  that column (rows within {FLOOR:g} points of 0% or 100% left out: pressed against the bound, they do not
  spread), with Student's t on the pooled degrees of freedom. D's seed part is σ × √(G / S) over S seeds, G = Σ
  weight² for separate trainings (the larger of that and the sum over sources of (Σ of their weights)², since
  transfers from one source share its training), added in quadrature to the test-image part.
- *Interval and verdicts.* D ± q × its standard error. "D > m": **holds** when the 95% interval (q at 1 − 0.025)
  lies above m, **contradicted** when the interval at 1 − 0.025 / k lies below m, k the claim's number of
  comparisons (Bonferroni: any one of them contradicts the claim). "|D| < m" (two one-sided tests): **holds** when
  the 95% interval lies inside (−m, m), **contradicted** when the interval at 1 − 0.025 / k lies wholly outside.
  Otherwise **inconclusive**: these seeds and test images cannot tell; beside each comparison, the distance from
  the margin a true D must have to be decided with 80% power (q + z₀.₈) × se says how far from decisive it was.
- *A claim* is **not testable here** when a comparison is (a row it needs missing; any seed of such a row
  carrying a flag that voids the column it needs: a constant-class or chance-level model its whole row, PGD-7 not
  converged its WB-PGD, gradient masking its white-box columns, a black-box source at chance or whose examples do
  not fool it the black-box ones; a baseline it takes a share or a fraction of not measurably above 0); else
  **contradicted** when any comparison is; else **holds** when every one holds (an intersection-union test: no
  correction needed); else **inconclusive**. The depth report combines its depths in the same order.
- *Margins*, where the paper gives none, from a quantity measured or cited, never from Table 1: "similar",
  "almost complete", "close to" = within **{SIMILAR:g} points**, what two trainings of one and the same model
  differ by 95% of the time on the paper's 10,000 test images (1.96 × √(2 × {SEED_SD:g}² + 2 × 0.5²): σ = the
  declared {SEED_SD:g} point, 0.5 the binomial standard error of 50% on 10,000 images), the closest the paper's
  own one-training table could tell apart; "proportionally the same" and "successful transfer" = a ratio within
  **{RATIO:.2f}–{1 / RATIO:.2f}**, the bounds of equivalence testing (FDA 2001, "Statistical Approaches to
  Establishing Bioequivalence").
- *Error rate: what it covers.* For every verdict of claims.md and depth.md, with one seed or several: a
  comparison is called "holds" when false, or "contradicted" when true, with probability at most 2.5% each
  (so at most 5% in all for a true D on the margin), and a claim likewise, provided the assumptions below hold,
  in particular, **with one seed, that the true seed spread is at most the declared σ**. A larger true spread
  makes one-seed verdicts wrong more often (`report.py --calibrate` prints how often). It does not cover the
  paper's numbers' line, the heatmaps (not tested) or Figure 3's choice of rows. Across claims these add up
  (9 × 2.5% that some verdict is wrong), and they are not independent: one unlucky R_pgd training moves claims
  1, 3, 4, 5, 7 and 8 together.
- *Assumptions.* The test images are a random sample of the images a claim is about; N is large enough for the
  mean per-image score to be near normal (true for thousands of images; on 50 the intervals are rough); seeds are
  independent trainings with a near-normal spread, alike across the rows of a column (the pool); the black-box
  columns (claims 2, 4, 7, 8) rest on the examples of **one** DenseNet121 (`BB_SEED`), whose own training
  spread is not in any interval: a verdict on them is about that source's examples. A verdict is about the
  numbers measured under the attacks run (WB-PGD is PGD-7 without restarts, as the paper's); it says nothing of
  a stronger attacker.
- *The paper's own numbers* go through the rule twice: as read (exact, no uncertainty: does our reading of the
  claim fit the paper's table?), and as evidence (the same rule on the paper's one training per model and 10,000
  test images, unpaired, σ declared: would the paper's table itself decide the claim?).
"""


def claim_verdict(claim, g, seed_sd=SEED_SD):
    """(verdict text, [Comparison]) of a claim on the run's rows g ({(table, row): evals}); seed_sd: the declared
    seed spread per model, used where the run measures none."""
    k, out = len(claim.tests), []
    for t in claim.tests:
        def terms(side):
            return [(w, g.get(("c10", key), []), col, name(key)) for w, key, col in side]
        extra = [(1, *s) for s in t.shares] if t.shares else [(1, *t.base)] if t.base else []
        nums = [x[1:] for x in terms(t.lhs) + terms(t.rhs) + terms(extra)]
        wl, wr = [w for w, *_ in t.lhs], [w for w, *_ in t.rhs]

        def sides(v, wl=wl, wr=wr, shares=t.shares):  # each side a weighted sum, or as % of its baseline
            a = sum(w * x for w, x in zip(wl, v))
            b = sum(w * x for w, x in zip(wr, v[len(wl):]))
            return (100 * a / v[-2], 100 * b / v[-1]) if shares else (a, b)
        spread = seed_spread(g, t.lhs[0][2], seed_sd)
        out.append(_test(nums, sides, t.margin, t.kind, ALPHA, dens=range(len(nums) - len(extra), len(nums)), k=k,
                         spread=spread))
    verdict = combine([c.verdict for c in out])
    if verdict == NOT_TESTABLE:
        return NOT_TESTABLE + " (" + "; ".join(dict.fromkeys(
            c.verdict[len(NOT_TESTABLE) + 2:-1] for c in out if c.verdict.startswith(NOT_TESTABLE))) + ")", out
    if claim.effect is not None:
        verdict += f" ({effect_words(out[0].lo, out[0].hi, claim.effect)})"
    return verdict + (f", {ONE_SEED}" if any(c.one_seed for c in out) else ""), out


def effect_words(lo, hi, paper):
    """Where the 95% interval of an effect lies against the paper's value: a description, not a verdict."""
    p = f"the paper's {paper:+.1f}"
    return (f"effect opposite to {p}" if hi < 0 else f"effect smaller than {p}" if hi < paper else
            f"effect larger than {p}" if lo > paper else f"effect consistent with {p}")


def paper_cell(key, col):
    """The paper's Table 1 value of a row and column, or None."""
    return PAPER[key][COLS.index(col)] if key in PAPER and col in COLS else None


def paper_value(test):
    """(lhs, rhs, D) of a comparison on the paper's Table 1 (no uncertainty), or None for rows it does not show."""
    vals = [[paper_cell(k, c) for _, k, c in side] for side in (test.lhs, test.rhs)]
    if any(v is None for side in vals for v in side):
        return None
    sides = [sum(w * v for (w, *_), v in zip(side, vs)) for side, vs in zip((test.lhs, test.rhs), vals)]
    if test.shares:
        sides = [100 * s / paper_cell(*sh) for s, sh in zip(sides, test.shares)]
    return sides[0], sides[1], round(sides[0] - sides[1], 6)  # rounded: 41.3 - 36.1 is +5.2, not 5.1999...


def paper_run():
    """The paper's Table 1 as a run: one training per row, 10,000 test images, no per-image results."""
    g = {}
    for k, v in PAPER.items():
        s, t, _ = (k.split("-") + [None, None])[:3]
        e = {"acc": dict(zip(COLS, v)), "seed": 0, "n_test": 10_000, "flags": [], "_table": "c10", "_key": k,
             "role": "transfer" if t else "baseline", "src": s if t else None}
        g[("c10", k)] = [e]
    return g


def claims_md(g, seed_sd=SEED_SD):
    """claims.md's text, and report.md's summary of it: [(claim number, title, verdict)]."""
    def pts(x):
        return f"{x:+.1f}"
    text, summary, paper_g = ["# The paper's claims, checked\n", CLAIMS_RULE], [], paper_run()
    spreads = {HEAD[c]: seed_spread(g, c, seed_sd)[2] for c in COLS}
    text.append("**This run's seed spread**, per column: " + ("; ".join(f"{c}: {v}" for c, v in spreads.items())
                if len(set(spreads.values())) > 1 else f"{next(iter(spreads.values()))}, in every column") + ".\n")
    for i, claim in enumerate(CLAIMS, 1):
        v, res = claim_verdict(claim, g, seed_sd)
        summary.append((i, claim.title, v))
        rows, exact = [], []
        for t, c in zip(claim.tests, res):
            p = paper_value(t)
            exact.append(NOT_TESTABLE if p is None else judge(p[2], t.margin, t.kind))
            rows.append([t.text, MISSING if p is None else f"{p[0]:.1f} vs {p[1]:.1f}: {pts(p[2])}",
                         MISSING if c.estimate is None else f"{c.lhs:.1f} vs {c.rhs:.1f}: {pts(c.estimate)} "
                         f"[{pts(c.lo)}, {pts(c.hi)}], se {c.se:.2f}", c.seeds or MISSING,
                         MISSING if c.mde is None else f"{c.mde:.1f}", "; ".join([c.verdict] + c.notes)])
        pe = claim_verdict(claim, paper_g, seed_sd)[0].split(", " + ONE_SEED)[0]
        k = len(claim.tests)
        text += [f"## Claim {i}: {claim.title}\n", f"> \"{claim.quote}\" ({claim.where})\n",
                 f"Hypothesis: {claim.reading}.\n",
                 f"k = {k} comparison{'s' if k > 1 else ''}: holds on 95% intervals"
                 + (f", contradicted on {100 * (1 - 2 * ALPHA / k):.4g}% ones.\n" if k > 1 else ".\n"),
                 md_table(["comparison", "paper", "reproduced: lhs vs rhs: D [95% interval], se", "seeds",
                           "80% power at (points from the margin)", "verdict"], rows),
                 f"**Verdict: {v}**\n",
                 f"The paper's own numbers: as read, **{combine(exact)}**; as evidence (one training per model, "
                 f"10,000 images), **{pe}**."
                 + (" The paper's own table fails this reading of its claim." if combine(exact) == "contradicted"
                    else "") + "\n"]
    text.append("The heatmaps (Figures 2-5) are shown, not tested: fig2.png - fig5.png in report.md.\n")
    return "\n".join(text), summary


def claims_summary(summary):
    """report.md's line under the claims table: the count of each verdict, and how many rest on one seed."""
    n = {v: sum(s.startswith(v) for _, _, s in summary) for v in ("holds", "contradicted", "inconclusive",
                                                                     NOT_TESTABLE)}
    one = sum(ONE_SEED in s for _, _, s in summary)
    return (f"{len(summary)} claims: {n['holds']} hold, {n['contradicted']} contradicted, {n['inconclusive']} "
            f"inconclusive, {n[NOT_TESTABLE]} not testable here. "
            + (f"**{one} of them rest on one seed**: their intervals take the declared seed spread, not a measured "
               f"one (`make SEEDS=\"0 1 2\" all` trains three and measures it)." if one else
               "No verdict rests on one seed."))


# ----------------------------------------------------------------------------------------------------------
# Figures
def normalise(m):
    """Per-column min-max over the rows shown, the paper's heatmap scale: 1 = best row, 0 = worst. Missing (NaN)
    stays NaN, and so does a constant column (one value, or one row): no row is better than another, and colouring
    it 1 would call every row the best."""
    m = np.asarray(m, float)
    out = np.full_like(m, np.nan)
    for j in range(m.shape[1]):
        ok = ~np.isnan(m[:, j])
        if ok.any():
            lo, hi = m[ok, j].min(), m[ok, j].max()
            if hi - lo > 1e-9:
                out[ok, j] = (m[ok, j] - lo) / (hi - lo)
    return out


def constant(raw):
    """The columns of raw whose rows shown all hold one value (missing cells aside)."""
    return [j for j in range(raw.shape[1]) if (~np.isnan(raw[:, j])).any() and np.nanmax(raw[:, j]) -
            np.nanmin(raw[:, j]) <= 1e-9]


def heatmap(ax, blocks, cols, get):
    keys = [k for b in blocks for k in b]
    raw = np.array([[np.nan if get(k, c) is None else get(k, c)[0] for c in cols] for k in keys], float)
    norm = normalise(raw)
    cmap = plt.get_cmap(CMAP).with_extremes(bad="#e0e0e0")
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for i, j in np.ndindex(raw.shape):
        if np.isnan(raw[i, j]):
            ax.add_patch(plt.Rectangle((j - .5, i - .5), 1, 1, fill=False, hatch="///", edgecolor="#b0b0b0", lw=0))
            ax.text(j, i, MISSING, ha="center", va="center", color="#606060", fontsize=9)
        else:  # a constant column's cells are grey (NaN in norm), with black text
            ax.text(j, i, f"{raw[i, j]:.1f}", ha="center", va="center", fontsize=8.5,
                    color="white" if norm[i, j] < 0.55 else "black")
    for y in np.cumsum([len(b) for b in blocks])[:-1]:
        ax.axhline(y - .5, color="white", lw=3)
    for x in [1, 3] + ([5] if len(cols) > 5 else []):  # Clean | BB | WB | stronger evaluation
        ax.axvline(x - .5, color="white", lw=3)
    for j in constant(raw):  # under the column, so that panels side by side keep their headers level
        ax.text(j, len(keys) - 0.4, "all equal:\nno best", ha="center", va="top", fontsize=8, color="#505050")
    ax.set_xticks(range(len(cols)), [HEAD[c] for c in cols], fontsize=9)
    ax.set_yticks(range(len(keys)), [name(k, tex=True) for k in keys], fontsize=10)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    return im


def figure(path, panels, cols, get, title="", note=""):
    """panels: [(title, blocks of row keys)], white lines between blocks. Returns False if no cell has data."""
    panels = [(t, [b for b in blocks if b]) for t, blocks in panels]
    if not any(get(k, c) for _, bl in panels for b in bl for k in b for c in cols):
        return False
    nrows = max(sum(map(len, bl)) for _, bl in panels)
    fig, axes = plt.subplots(1, len(panels), squeeze=False, layout="constrained",
                             figsize=(0.8 * len(cols) * len(panels) + 1.8 * len(panels) + 1,
                                     max(0.32 * nrows + 0.9, 3.6)))  # at least the colour bar's label
    for ax, (sub, blocks) in zip(axes[0], panels):
        im = heatmap(ax, blocks, cols, get)
        if sub:
            ax.set_title(sub, fontsize=11, pad=22)
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.04 if len(panels) > 1 else 0.06, pad=0.02,
                 label="normalised per column\n(1 = best, 0 = worst; grey: all equal)")
    suptitle(fig, title, note)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def curves(path, title, panels, g, ref=None, note=""):
    """Accuracy against eps, one panel per (title, row keys): a line per model (the mean over seeds at each eps;
    line style = strategy), R_ref in black in every panel for comparison. False, and nothing written, when no
    model has a curve."""
    def points(k):
        pts = {}
        for e in g.get(("c10", k), []):
            cv = e.get("curve") or {}
            for x, y in zip(cv.get("eps_256") or [], cv.get("acc") or []):
                pts.setdefault(x, []).extend([] if y is None else [y])
        return {x: statistics.mean(v) for x, v in sorted(pts.items()) if v}
    panels = [(t, [k for k in ([ref] if ref else []) + keys if points(k)]) for t, keys in panels]
    panels = [(t, ks) for t, ks in panels if any(k != ref for k in ks) or len(panels) == 1 and ks]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), squeeze=False, sharey=True, figsize=(0.6 + 4.4 * len(panels), 3.6),
                             layout="constrained")
    for ax, (sub, keys) in zip(axes[0], panels):
        ticks = set()
        for k in keys:
            pts = points(k)
            ticks.update(pts)
            kw = dict(color="black", lw=1, marker="s", label=name(k, True) + " (no transfer)") if k == ref else \
                dict(color=COLOUR[k.split("-")[0]], ls={"1": ":", "12": "--"}.get(k.split("-")[-1], "-"), marker="o",
                     label=name(k, True))
            ax.plot(list(pts), list(pts.values()), ms=3.5, **kw)
        ax.set_xscale("symlog", linthresh=1, linscale=0.5)  # eps 0 and the doublings 1..32 evenly spaced
        ax.set_xticks(sorted(ticks), [f"{x:g}" for x in sorted(ticks)])
        ax.axvline(8, color="grey", lw=0.8, ls=":")
        ax.text(8, 50, "paper's eps ", fontsize=8, color="grey", va="center", ha="right", rotation=90)
        ax.set(xlabel="eps (/256 on [0,1]; x2 on the paper's [-1,1])", ylim=(0, 100), title=sub)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(fontsize=8, frameon=False, loc="upper right")
    axes[0][0].set_ylabel("white-box PGD accuracy (%)")
    suptitle(fig, title, note)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def suptitle(fig, title, note):
    """A figure's title, with the run's departure from the paper's protocol under it: a figure read alone (pasted
    into slides) must not pass for the paper's. Both wrapped to the figure's width, as measured by its renderer."""
    renderer = fig.canvas.get_renderer()
    for width in range(max(len(title), len(note), 20), 19, -4):
        t = fig.suptitle("\n".join(textwrap.wrap(title, width) + textwrap.wrap(note, width)), fontsize=10)
        if t.get_window_extent(renderer).width <= 0.97 * fig.bbox.width:
            return


# ----------------------------------------------------------------------------------------------------------
# The report

def sanity(evals):
    """[(eval, check, detail)]: the evaluations' own flags, the eps scales and the collapse verdict the training
    recorded; and the adversarially trained models that recorded none."""
    out, unchecked = [], []
    for e in evals:
        found = [(str(f["check"]), str(f.get("detail", ""))) for f in e["flags"]]  # eps-scale added by check()
        t = e.get("train") or {}
        if any((common.OBJECTIVES.get(e.get(k)) or common.OBJECTIVES["nat"]).validate for k in ("adv", "tgt")):
            if "collapse" not in t:
                unchecked.append(f"{label(e)} seed {e['seed']}")
            elif t["collapse"]:
                found.append(("pgd-collapse", str(t["collapse"])))
        out += [(e, c, d) for c, d in found]
    return out, unchecked


def training_curves(path, g, note=""):
    """Per model, from the per-epoch rows the training recorded: validation clean accuracy (solid), validation
    accuracy under the training attack (dashed), the train-batch PGD monitor (dotted), the kept epoch (a dot).
    One panel per row group. False, and nothing written, when no model recorded rows."""
    groups = [("CIFAR-100 sources", [("src", k) for k in ADV]), ("Baselines (no transfer)", [("c10", k) for k in ADV])]
    groups += [(f"Transfers with {t} target training", [("c10", tkey(s, t, u)) for s in ADV for u in UNF])
               for t in ADV]
    groups += [("DenseNet121 (black-box source)", [("bb", "densenet")])]
    groups += [("Beyond the paper", [("src", k) for k in src_keys(g)[len(ADV):]]
                + [("c10", k) for k in beyond_keys(k for t, k in g if t == "c10")])]
    panels = [(title, [e for k in keys for e in g.get(k, []) if (e.get("train") or {}).get("rows")])
              for title, keys in groups]
    panels = [p for p in panels if p[1]]
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(5.2 * cols, 3.6 * rows), layout="constrained")
    for ax, (title, es) in zip(axes.flat, panels):
        for j, e in enumerate(es):
            t, colour = e["train"], f"C{j % 10}"
            who = (name(e["_key"], tex=True) if e["_table"] == "c10" else label(e).replace("CIFAR-100 source ", "")) \
                + (f" s{e['seed']}" if e["seed"] else "")
            for col, ls in (("val_clean", "-"), ("val_adv", "--"), ("train_batch_pgd", ":")):
                pts = [(r["epoch"], r[col]) for r in t["rows"] if isinstance(r.get(col), (int, float))
                       and isinstance(r.get("epoch"), (int, float))]
                if pts:
                    ax.plot(*zip(*pts), color=colour, ls=ls, lw=1.2, label=who if ls == "-" else None)
            kept = next((r for r in t["rows"] if r.get("epoch") == t.get("epoch")), None)
            if kept and isinstance(kept.get("val_clean"), (int, float)):
                ax.plot(kept["epoch"], kept["val_clean"], "o", color=colour, ms=4)
        last = max((r.get("epoch") or 1 for e in es for r in e["train"]["rows"]), default=1)
        ax.set(title=title, xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100), xlim=(0.5, last + 0.5))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    suptitle(fig, "Training: validation clean (solid), validation under the training attack (dashed), "
                  "train-batch PGD (dotted); dot = kept epoch", note)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def heatmaps(get, voided=()):
    """{figure: (caption, [(panel title, blocks of rows)])}: white lines between blocks. voided: rows whose WB-PGD
    or clean number a flag voids, never picked as Figure 3's best."""
    def best(cands):  # Figure 3's rows: our rule (the paper states none), on test numbers: a display, no claim uses it
        have = [k for k in cands if get(k, "wb_pgd") and k not in voided]
        return [max(have, key=lambda k: (get(k, "wb_pgd")[0], (get(k, "clean") or (0,))[0]))] if have else []
    table1 = []
    for k in TABLE1:  # each baseline alone, then each source/target triple
        if "-" not in k or k.endswith("-1"):
            table1.append([])
        table1[-1].append(k)
    return {
        "fig2": ("Figure 2: transfer without target defence: the baselines, then strategies 1, 12, 56",
                 [(None, [list(ADV)] + [[tkey(s, "nat", u) for s in ADV] for u in UNF])]),
        "fig3": ("Figure 3: per strategy, the transfer with FGSM and with PGD target training with the highest test "
                 "WB-PGD (ties: clean; our rule, chosen on the test set: a display, not evidence) against the "
                 "baselines; cells: accuracy (%), not the paper's normalised values"
                 + (f"; rows whose WB-PGD or clean a flag voids are not candidates ({', '.join(map(name, voided))})"
                    if voided else ""),
                 [("cells: accuracy (%); colour: normalised per column", [list(ADV), ["nat-nat-56"]] + [
                     sum((best([tkey(s, t, u) for s in ADV]) for t in ADV[1:]), []) for u in UNF])]),
        "fig4": ("Figure 4: the 24 rows of the paper's Table 1 (the 6 transfers it does not show, fgsm->pgd and "
                 "pgd->fgsm, are in table1.md and the curves)", [(None, table1)]),
        "fig5": ("Figure 5: FGSM against PGD, each panel normalised on its own",
                 [(a.upper(), [[a]] + [[tkey(s, t, u) for u in UNF] for s, t in ((a, "nat"), ("nat", a), (a, a))])
                  for a in ADV[1:]]),
    }


def settings(evals):
    """The threat model and settings sections, from what the evaluations record."""
    def uniq(field):
        return ", ".join(sorted({str(e[field]) for e in evals if e.get(field) is not None})) or MISSING
    attacks = {}
    for e in evals:
        for a, s in (e.get("attacks") or {}).items():
            txt = ", ".join(f"{k}={v}" for k, v in s.items()) if isinstance(s, dict) else str(s)
            attacks[(a, txt)] = attacks.get((a, txt), 0) + 1
    eps = sorted({e["eps"] for e in evals if isinstance(e.get("eps"), (int, float))})
    wall = sum(e["wall_s"] for e in evals if isinstance(e.get("wall_s"), (int, float)))
    dates = sorted(str(e["date"])[:10] for e in evals if e.get("date"))
    lines = ["## Threat model\n", "L-infinity; " + ("; ".join(map(eps_str, eps)) or "eps not recorded") + ". "
             "White-box (WB): the model's own gradients, true labels; black-box (BB): examples crafted once on the "
             "naturally trained DenseNet121, then classified by each model. The attacks as the evaluations record "
             "them (number of models):\n"]
    lines += [f"- {a}: {s} ({n})" for (a, s), n in attacks.items()]
    lines += ["\n## Settings\n", f"- evaluations: {len(evals)}; test images each: {uniq('n_test')}; seeds: "
              f"{uniq('seed')}", f"- devices: {uniq('device')}; torch: {uniq('torch')}",
              f"- evaluation wall time: {wall / 3600:.2f} h in total; dates: "
              + (f"{dates[0]} to {dates[-1]}" if dates else MISSING) + "\n"]
    return "\n".join(lines)


def group(evals):
    """{(table, row): [evaluations by seed]} and get(row, column) -> (mean, std, n) or None for CIFAR-10 rows."""
    g = {}
    for e in sorted(evals, key=lambda e: e["seed"]):
        g.setdefault((e["_table"], e["_key"]), []).append(e)
    return g, lambda k, c: stat(g.get(("c10", k), []), c)


def terminal_table(get):
    """Table 1 for the terminal: reproduced (paper) per column, every row; MISSING where not run."""
    w = max(len(name(k)) for k in ROWS) + 2
    lines = ["Table 1, CIFAR-10 test accuracy (%): reproduced (paper)",
             ("".ljust(w) + "".join(HEAD[c].ljust(15) for c in COLS)).rstrip()]
    for k in ROWS:
        cells = []
        for c, p in zip(COLS, PAPER.get(k, (None,) * 5)):
            s = get(k, c)
            cells.append(((MISSING if s is None else f"{s[0]:.1f}") + ("" if p is None else f" ({p:.1f})")).ljust(15))
        lines.append((name(k).ljust(w) + "".join(cells)).rstrip())
    return "\n".join(lines)


def build(out, evals, run, seed_sd=SEED_SD):
    g, get = group(evals)
    checks, unchecked = sanity(evals)
    flags = {}
    for e, c, _ in checks:
        if c not in flags.setdefault((e["_table"], e["_key"]), []):
            flags[(e["_table"], e["_key"])].append(c)
    beyond = beyond_keys(k for t, k in g if t == "c10")
    extra = tuple(c for c in EXTRA if any(get(k, c) for k in ROWS + beyond))
    deps = departures(evals)
    top = banner(deps)
    t1, rows = tables(g, flags, extra)
    t1 = t1.replace("\n\n", "\n\n" + top + "\n", 1) if top else t1  # the banner right under the title
    claims, summary = claims_md(g, seed_sd)
    claims = claims.replace("\n\n", "\n\n" + top + "\n", 1) if top else claims  # read alone, it says so too
    keys = list(dict.fromkeys(SETTING[k] for k, _, _ in departures([e for e in evals if not is_beyond(e)])))
    note = (f"NOT THE PAPER'S PROTOCOL ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}): see report.md"
            if deps else "")
    unpaired = [f"{label(e)} seed {e['seed']}" for e in sorted(evals, key=order)
                if e["_table"] == "c10" and not e.get("per_image")]
    with open(os.path.join(out, "table1.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    voided = [k for k in ROWS if any(blocking(e, c) for e in g.get(("c10", k), []) for c in ("clean", "wb_pgd"))]
    fig4 = tuple(c for c in extra if c in FIG4_EXTRA)
    drawn = {f: (cap, figure(os.path.join(out, f + ".png"), panels, COLS + (fig4 if f == "fig4" else ()), get,
                             cap.split(" (")[0], note)) for f, (cap, panels) in heatmaps(get, voided).items()}
    if beyond:  # its own figure: never in Figures 2-5
        cap = "Beyond the paper: rows of methods from common's tables that the paper did not run, every column"
        drawn["beyond"] = (cap, figure(os.path.join(out, "beyond.png"), [(None, [beyond])], COLS + extra, get,
                                       cap.split(":")[0], note))
    for t in (None,) + ADV:
        f, title = ("curves_baselines", "Baselines (no transfer)") if t is None else \
            (f"curves_tgt_{t}", f"Transfers with {t} target training, one panel per source (R_tgt in black)")
        panels = [("", list(ADV))] if t is None else [(f"{s} source", [tkey(s, t, u) for u in UNF]) for s in ADV]
        drawn[f] = (title, curves(os.path.join(out, f + ".png"), title, panels, g, t, note))
    drawn["training"] = ("Training curves per model, from the per-epoch rows each training recorded",
                         training_curves(os.path.join(out, "training.png"), g, note))

    missing = [name(k) for k in ROWS if ("c10", k) not in g]
    partial = [f"{name(k)} ({', '.join(HEAD[c] for c in COLS if not get(k, c))})" for k in ROWS
               if ("c10", k) in g and not all(get(k, c) for c in COLS)]
    text = ["# Reproduction report: Davchev et al. 2019 (arXiv 1905.02675)\n"] + ([top] if top else []) + [
            f"Run `{run}`. Tables: table1.md, table1.csv; the claims in detail: claims.md.\n",
            settings(evals), "## Results\n", t1.split("\n## What ran")[0].split("\n", 2)[2].replace(top, "")
            .replace("\n## ", "\n### "), "\n## What ran\n", t1.split("\n## What ran\n")[1].lstrip("\n"),
            "\n## The paper's claims\n", md_table(["claim", "statement", "verdict"], summary),
            "\n" + claims_summary(summary) + " Each comparison is paired over the test images and adds the spread "
            "between trainings (declared with one seed, measured with several); a claim is called 'holds' when false, "
            "or 'contradicted' when true, with probability at most 2.5% each under the assumptions stated, with one "
            "seed only if the true spread is at most the declared one; the rule, its scope, each claim's hypothesis "
            "and margin, and every comparison: [claims.md](claims.md)."
            + (f" No per-image results (evaluated before they were recorded; "
            f"their comparisons use an unpaired bound): {', '.join(unpaired)}." if unpaired else "")
            + "\n\n## Figures\n",
            "Heatmaps as in the paper: each column min-max normalised over the rows shown (1 = best, 0 = worst), the "
            "raw accuracy (%) in each cell, white lines between row groups and between Clean | BB | WB"
            + (" | the stronger evaluation (Figure 4 only)" if extra else "") + f"; grey hatched {MISSING} = not run;"
            " a column whose rows are all equal is grey, marked 'all equal: no best' under it;"
            " several seeds: the mean. Figure 3's rows per strategy: the transfer with the highest test WB-PGD "
            "(ties: clean) among those with FGSM target training and among those with PGD target training, a row "
            "whose WB-PGD or clean number a flag voids never chosen; the paper "
            "does not state its rule (\"the best models per each of the 3 transfer learning strategies\", Sec. 3.2), "
            "so this one is ours, and since it picks on the test set Figure 3 is a display only: no claim uses its "
            "choice. The paper's Figure 3 prints the normalised values in its cells; ours print accuracies, as the "
            "other figures. Curves: the mean over seeds."
            "\n"]
    text += [f"**{cap}**\n\n![]({f}.png)\n" if ok else f"- {f}.png: not drawn, no data\n"
             for f, (cap, ok) in drawn.items()]
    text += ["## What was not run\n", f"- {len(missing)} of the {len(ROWS)} CIFAR-10 rows have no evaluation: "
             + ", ".join(missing) if missing else "- every CIFAR-10 row has an evaluation"]
    text += [f"- rows with missing columns: {'; '.join(partial)}"] if partial else []
    text += [f"- CIFAR-100 source {k}: no evaluation" for k in ADV if ("src", k) not in g]
    text += ["- DenseNet121: no evaluation"] if ("bb", "densenet") not in g else []
    text += ["- the stronger evaluation (WB-strong, Worst): not run"] if not extra else []
    text += [f"- left out: {s}" for s in SKIPPED]
    text += ["\n## Sanity checks\n", f"The evaluations' flags, the eps scales, and {COLLAPSE_RULE}. A flag voids "
             "the columns it concerns for the claims (claims.md): a constant-class or chance-level model its whole "
             "row, PGD-7 not converged its WB-PGD, gradient masking its white-box columns, a black-box source at "
             "chance or not fooled by its own examples, or black-box above clean, its black-box columns; catastrophic "
             "overfitting voids nothing. Each "
             "flagged row:\n"]
    text += [f"- **{label(e)}** seed {e['seed']}: `{c}`: {d} ({os.path.relpath(e['_path'], run)})"
             for e, c, d in checks] or ["- no flags"]
    text += [f"- {len(unchecked)} adversarially trained models recorded no collapse verdict (trained before it was "
             "recorded), not checked: " + ", ".join(unchecked)] if unchecked else []
    text += ["\n## Departures from the paper\n", "### This run's settings against the paper's protocol\n"]
    every = [label(e) for e in sorted(evals, key=order)]

    def which(rows_):  # "every model", "every model but ...", or the rows
        rest = [r for r in dict.fromkeys(every) if r not in rows_]
        if rest and (len(rest) > 3 or len(rows_) <= 2 * len(rest)):
            return ", ".join(rows_)
        return "every model" + (f" but {', '.join(rest)}" if rest else "")
    text += [f"- {SETTING[k]}: {h} (paper {p}): {which(rows_)} ({len(rows_)})" for (k, h, p), rows_ in deps.items()] \
        or ["- none: every recorded setting is the paper's protocol"]
    text += ["\n### Choices of this implementation (every run)\n"] + [f"- {d}" for d in DESIGN]
    for fname, body in (("table1.md", t1), ("claims.md", claims), ("report.md", "\n".join(text) + "\n")):
        with open(os.path.join(out, fname), "w") as f:
            f.write(body)
    return get, top


# ----------------------------------------------------------------------------------------------------------
# The depth sweep (`make depth`, report.py --depth): the evaluation's columns against how much of the source is
# unfrozen, on common.freeze's one scale (bK: the last K residual blocks and the head; the paper's 1, 12 and 56 are
# K = 0, 9 and 28 of ResNet56), and the paper's reading of Sec. 3.1 tested on that curve. It reads the same
# evaluations as the report above and shares its statistics (stat) but none of Table 1's machinery.

DEPTH_COLS = COLS + ("wb_strong",)
DEPTH_COLOUR = {"clean": "black", "bb_fgsm": "tab:cyan", "bb_pgd": "tab:blue", "wb_fgsm": "tab:orange",
                "wb_pgd": "tab:red", "wb_strong": "tab:purple"}
DEPTH_PANELS = (("clean and black-box", ("clean", "bb_fgsm", "bb_pgd")), ("white-box", ("wb_fgsm", "wb_pgd",
                                                                                         "wb_strong")))
READING = {"BB": ("bb_fgsm", "bb_pgd"), "WB": ("wb_fgsm", "wb_pgd")}
SOURCE = {"nat": "naturally trained", "fgsm": "FGSM-trained", "pgd": "PGD-trained"}
TARGET = {"nat": "natural", "fgsm": "FGSM", "pgd": "PGD"}
DEPTH_MARGIN = SIMILAR  # points: claim 4's "almost complete" (R_{pgd->nat} 12 keeps BB-PGD within it of R_pgd)


def depth_table(arch="resnet56", num_classes=10):
    """[(depth, K, trainable weight layers, trainable parameters)] for every allowed depth (README's table)."""
    model, rows = common.build_model(arch, num_classes), []
    n_blocks = len([*model.layer1, *model.layer2, *model.layer3])
    for u in common.DEPTHS:
        if isinstance(u, str) and common.depth_k(u) in (n_blocks // 3, *range(n_blocks + 1, 28)):
            continue  # a smaller ResNet's 12 under another name, or beyond its blocks
        params = common.freeze(model, u)
        layers = sum(m.weight.requires_grad for m in common.weight_layers(model))
        rows.append((u, common.depth_k(u, n_blocks), layers, sum(p.numel() for p in params)))
    return sorted(rows, key=lambda r: r[1])


def is_depth(u):
    """A recorded unfreeze value: 1, 12, 56 (int) or 'bK' (str), exactly as transfer.py records it."""
    try:
        return common.parse_unfreeze(u) == u
    except UsageError:
        return False


def n_blocks(arch):
    """Residual blocks of a CIFAR ResNet (27 for ResNet56), the length of the depth scale."""
    return (int(arch[6:]) - 2) // 2 if str(arch).startswith("resnet") and str(arch)[6:].isdigit() else 27


def depth_order(e):  # a transfer that is no row of Table 1: after them, by source x target, then depth
    n = list(common.OBJECTIVES)
    return len(ROWS) + 100 * (len(n) * n.index(e["src"]) + n.index(e["tgt"])) + common.depth_k(e["unfreeze"])


# ---- The statistical rule of the depth verdicts: the claims check's compare() -------------------------------
COMPARE_RULE = (
    "Rule: the claims check's (claims.md, \"The rule\"): D = transfer − R_src, paired over the test images, with the "
    "seed spread per model added (declared with one seed, measured and pooled over the run's rows with several; "
    "R_src's training is shared by every depth, and counts in each). 'transfer > R_src − M' **holds** when the 95% "
    "interval lies above −M, is **contradicted** when the interval Bonferroni-widened over the depths of the curve "
    "lies below −M (any one depth contradicts a group), and is **inconclusive** otherwise; a flagged or missing "
    "number makes it **not testable here**. A group of depths holds when every depth holds, so that its verdicts "
    "have the claims' error rate (at most 2.5% each way, under the claims' assumptions).")


def depth_compare(es, ref, col, margin, k, spread=None):
    """'transfer > R_src - margin' on one column, one of k depths: (D, half-width of its 95% interval, verdict).
    "contradicted" is judged at ALPHA / k, "holds" at ALPHA (a group holds only when every depth does)."""
    c = compare([(1, es, col)], [(1, ref, col)], -margin, "greater", ALPHA, k=max(k, 1), spread=spread)
    if c.estimate is None:
        return None, None, NOT_TESTABLE
    return c.estimate, c.hi - c.estimate, c.verdict


def sweep(g, s, t, asked):
    """(the ResNet's residual blocks, [(depth, evaluations over seeds)] of transfer s -> t shallow to deep): the
    depths asked for and every other depth of this pair the run evaluated."""
    es = [e for (tab, _), v in g.items() if tab == "c10" for e in v if e["role"] == "transfer"
          and (e["src"], e["tgt"]) == (s, t)]
    nb = n_blocks(es[0].get("arch") if es else "resnet56")
    asked = [u for u in asked if isinstance(u, int) or common.depth_k(u) <= nb]  # a smaller ResNet has fewer blocks
    depths = sorted(set(asked) | {e["unfreeze"] for e in es}, key=lambda u: common.depth_k(u, nb))
    return nb, [(u, g.get(("c10", tkey(s, t, u)), [])) for u in depths]


def falls_from(cells):
    """The shallowest depth from which every deeper depth that could be tested is contradicted, or None: cells
    [(depth, verdict)] shallow to deep. A depth not testable (not evaluated, or flagged) neither breaks nor
    extends the fall; the text names it."""
    out = None
    for u, v in reversed(cells):
        if v == NOT_TESTABLE:
            continue
        if v != "contradicted":
            break
        out = u
    return out


def reading(g, s, t, nb, rows, margin, seed_sd=SEED_SD):
    """The paper's reading on one curve, as markdown lines."""
    ref, last = g.get(("c10", s), []), nb // 3
    stage = [u for u, _ in rows if 1 <= common.depth_k(u, nb) <= last]  # b1 .. 12: the lower stages frozen
    table, lines = [], []
    for grp, cols in READING.items():
        held, paper, per_col = [], [], []
        for col in cols:
            spread = seed_spread(g, col, seed_sd)
            res = [(u, *depth_compare(es, ref, col, margin, len(rows), spread)) for u, es in rows]
            table.append([HEAD[col]] + [MISSING if d is None else f"{d:+.1f} ± {uu:.1f} {v}" for _, d, uu, v in res])
            held += [v for u, _, _, v in res if u in stage]
            paper += [judge(d, -margin, "greater") for u in stage if tkey(s, t, u) in PAPER  # no uncertainty
                      for d in [paper_cell(tkey(s, t, u), col) - paper_cell(s, col)]]
            at = {v: ", ".join(str(u) for u, _, _, w in res if w == v) or "none" for v in ("holds", "inconclusive")}
            f = falls_from([(u, v) for u, _, _, v in res])
            tested = [(u, v) for u, _, _, v in res if v != NOT_TESTABLE]
            skipped = [str(u) for u, _, _, v in res if v == NOT_TESTABLE and f is not None
                       and common.depth_k(u, nb) > common.depth_k(f, nb)]
            per_col.append(f"  - {HEAD[col]}: holds at {at['holds']}; inconclusive at {at['inconclusive']}; " + (
                f"falls from {f}: contradicted there and at every deeper depth that could be tested"
                + (f" (not testable, so not counted: {', '.join(skipped)})" if skipped else "") if f is not None else
                f"does not fall within the depths evaluated (the deepest, {tested[-1][0]}: {tested[-1][1]})"
                if tested else "nothing to compare (a depth or R_src not evaluated)"))
        at12 = [depth_compare(dict(rows).get(12, []), ref, col, margin, len(rows), seed_spread(g, col, seed_sd))[2]
                for col in cols]
        lines += [f"- **{grp}** ({' and '.join(HEAD[x] for x in cols)}) within {margin:g} points of R_{s} at every "
                  f"depth up to the last stage ({', '.join(map(str, stage)) or 'none of b1 to 12 swept'}): "
                  f"**{combine(held)}**. At the last stage itself (12): {combine(at12)}"
                  + (f"; the paper's Table 1 there: {combine(paper)}." if paper else ".")] + per_col
    return (["### The paper's reading, tested on this curve\n",
             "Sec. 3.1: unfreezing the last block \"resulted in an almost complete transfer of the defence against BB "
             "attacks. This itself suggests that robust low level features are sufficient to defend just as well "
             "against such simpler attacks\". On the curve: while the stages below the last one stay frozen (the "
             f"depths b1 to 12), BB robustness stays within {margin:g} points of R_{s}, the source's training done on "
             "CIFAR-10 without transfer (the source-side baseline; claim 4 of claims.md makes the same comparison "
             "at 12); deeper, it falls. The same is asked of WB robustness. Head only (1) is shown but is no part of "
             "the reading: the paper's own head-only rows underfit the target (R_{pgd->nat} 1: 64.9% clean).\n",
             COMPARE_RULE + f" Each cell: D = transfer - R_{s} ± the half-width of its interval, and the verdict of "
             f"'transfer > R_{s} - {margin:g}'. "
             + (f"**{ONE_SEED}**: a row or R_{s} was run with one seed. " if any(len(es) == 1 for _, es in rows)
                or len(ref) == 1 else "") +
             "A group's verdict over several depths combines them in the claims' one order: not testable here when "
             "any depth is (not evaluated, or flagged), else contradicted when any is, else holds when all hold, "
             "else inconclusive.\n",
             md_table(["column"] + [f"{u} (K {common.depth_k(u, nb)})" for u, _ in rows], table)] + lines)


def depth_figure(path, curves_, margin, note=""):
    """Per source x target, two panels (clean and black-box; white-box): one line per column against depth (the
    mean over seeds, a band of ± std with several), R_src dashed (the reading's reference), the paper's Table 1
    hollow, the paper's three depths and the stages marked; beside each panel the models without transfer."""
    fig = plt.figure(figsize=(15, 4.6 * len(curves_) + 0.9), layout="constrained")
    rows_ = fig.subfigures(len(curves_), 1, squeeze=False)[:, 0]
    seeds = max((len(es) for cv in curves_ for _, es in cv["rows"]), default=1)
    for sf, cv in zip(rows_, curves_):
        s, t, nb, rows, refs = cv["src"], cv["tgt"], cv["nb"], cv["rows"], cv["refs"]
        sf.suptitle(rf"$R_{{{s} \rightarrow {t}}}$: the {SOURCE.get(s, s + '-trained')} CIFAR-100 source, "
                    f"{TARGET.get(t, t)} training on CIFAR-10", fontsize=12)
        axes = sf.subplots(1, 4, gridspec_kw={"width_ratios": [5, 1.1, 5, 1.1]})
        ks = [common.depth_k(u, nb) for u, _ in rows]
        paper_ks = [(u, common.depth_k(u, nb)) for u in UNF]
        for (title, cols), ax, rax in zip(DEPTH_PANELS, axes[0::2], axes[1::2]):
            stages = ((0.5, nb / 3 + 0.5, "layer3"), (nb / 3 + 0.5, 2 * nb / 3 + 0.5, "layer2"),
                      (2 * nb / 3 + 0.5, nb + 0.5, "layer1"), (nb + 0.5, nb + 1.5, "stem"))
            for lo, hi, stage in stages:  # what the last K blocks reach into, named on the top axis
                ax.axvspan(lo, hi, color="0.93" if stage in ("layer3", "layer1") else "white", zorder=0)
            top = ax.secondary_xaxis("top")
            top.set_xticks([(lo + hi) / 2 for lo, hi, _ in stages], [f"{st} unfrozen" if st != "stem" else st
                                                                     for _, _, st in stages], fontsize=8, color="0.4")
            top.tick_params(length=0)
            for u, k in paper_ks:  # the paper's three depths
                ax.axvline(k, color="0.5", lw=0.8, ls=":", zorder=1)
                ax.text(k, 99, f" paper {u}", fontsize=8, color="0.35", va="top", ha="left" if k < nb else "right")
            for col in cols:
                colour, pts = DEPTH_COLOUR[col], [(k, stat(es, col)) for k, (_, es) in zip(ks, rows)]
                pts = [(k, st) for k, st in pts if st]
                if pts:
                    x, m, sd = (np.array(v, float) for v in zip(*[(k, st[0], st[1]) for k, st in pts]))
                    ax.plot(x, m, "-o", color=colour, ms=4, lw=1.6, label=HEAD[col], zorder=3)
                    if seeds > 1:
                        ax.fill_between(x, m - sd, m + sd, color=colour, alpha=0.18, lw=0, zorder=2)
                r = stat(refs.get(f"R_{s}", []), col)
                if r:  # the reading's reference, and the margin below it
                    ax.axhline(r[0], color=colour, ls="--", lw=1)
                    ax.axhspan(r[0] - margin, r[0], color=colour, alpha=0.07, lw=0)
                for u, k in paper_ks:
                    p = paper_cell(tkey(s, t, u), col)
                    if p is not None:
                        ax.plot(k, p, "D", mfc="none", mec=colour, ms=7, mew=1.3, zorder=4)
            ax.set_xticks(ks, [str(u) for u, _ in rows], fontsize=8)
            ax.set(xlim=(-0.7, nb + 1.7), ylim=(0, 100), ylabel="CIFAR-10 test accuracy (%)", title=title,
                   xlabel=f"unfrozen depth: bK = the last K of the {nb} residual blocks + head; 1 = head only, "
                          f"12 = K {nb // 3}, 56 = all", )
            ax.xaxis.label.set_fontsize(8)
            ax.grid(axis="y", alpha=0.3)
            # the models without transfer, beside the curve: the CIFAR-10 baselines and the source on its own task
            names = list(refs)
            for j, nm in enumerate(names):
                for col in cols:
                    st = stat(refs[nm], col)
                    if st:
                        rax.hlines(st[0], j - 0.35, j + 0.35, color=DEPTH_COLOUR[col], lw=2.2)
                    p = paper_cell(nm[2:], col) if nm.startswith("R_") else None
                    if p is not None:
                        rax.plot(j, p, "D", mfc="none", mec=DEPTH_COLOUR[col], ms=6, mew=1.2)
            rax.set_xticks(range(len(names)), [n.replace(" on CIFAR-100", "\n(CIFAR-100)") for n in names],
                           fontsize=7.5, rotation=90)
            rax.set(xlim=(-0.6, max(len(names), 1) - 0.4), ylim=(0, 100), title="no transfer")
            rax.title.set_fontsize(9)
            rax.tick_params(labelleft=False)
            rax.grid(axis="y", alpha=0.3)
    handles = [matplotlib.lines.Line2D([], [], color=DEPTH_COLOUR[col], marker="o", ms=4, label=HEAD[col])
               for col in DEPTH_COLS]
    handles += [matplotlib.lines.Line2D([], [], color="0.3", ls="--", label=f"R_src: the source's training without "
                                        f"transfer (shaded: {margin:g} points below it, the reading's margin)"),
                matplotlib.lines.Line2D([], [], color="0.3", marker="D", mfc="none", ls="none",
                                        label="the paper's Table 1")]
    if seeds > 1:
        handles.append(matplotlib.patches.Patch(color="0.6", alpha=0.4, label="± std over seeds"))
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=8.5, frameon=False)
    fig.suptitle("Where robustness lives: CIFAR-10 accuracy against how much of the source is unfrozen"
                 + (f" (mean ± std over up to {seeds} seeds)" if seeds > 1 else "") + (f"\n{note}" if note else ""),
                 fontsize=13)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def pair_md(g, s, t, nb, rows, refs, margin, seed_sd=SEED_SD):
    """depth.md's section of one source x target: every depth's row, the models without transfer, the reading."""
    params = {u: n for u, _, _, n in depth_table(next(e["arch"] for _, es in rows for e in es))}
    depth_rows = [[f"`{u}`", common.depth_k(u, nb), common.describe_unfreeze(u),
                   f"{params[u]:,}" if u in params else MISSING, len(es)]
                  + [fmt(stat(es, x), paper_cell(tkey(s, t, u), x), len(es)) for x in DEPTH_COLS] for u, es in rows]
    ref_rows = [[nm, len(es)] + [fmt(stat(es, x), paper_cell(nm[2:], x) if nm.startswith("R_") else None, len(es))
                                 for x in DEPTH_COLS] for nm, es in refs.items()]
    flagged = [f"{nm} seed {e['seed']}: `{f['check']}`" for nm, es in list(refs.items()) + [(f"depth {u}", es)
               for u, es in rows] for e in es for f in e["flags"]]
    return [f"## R_{{{s}->{t}}}: the {SOURCE.get(s, s + '-trained')} source, {TARGET.get(t, t)} training on CIFAR-10\n",
            md_table(["depth", "K", "trains", "parameters", "n"] + [HEAD[x] for x in DEPTH_COLS], depth_rows),
            "\nWithout transfer: the CIFAR-10 baselines, and the source on its own CIFAR-100 test set.\n",
            md_table(["model", "n"] + [HEAD[x] for x in DEPTH_COLS], ref_rows),
            ("**Flagged** (a flag voids the columns it concerns, report.md's sanity checks say why): "
             + "; ".join(flagged) if flagged else "No flags on these models, the source and R_src included.") + "\n"] \
        + reading(g, s, t, nb, rows, margin, seed_sd) + [""]


def depth_report(a):
    """report.py --depth: depth.md and depth.png in --out (default RUN/depth), written atomically."""
    asked = [common.parse_unfreeze(u) for u in a.unfreeze]
    if a.margin < 0:
        raise UsageError(f"--margin must be non-negative (points of accuracy), got {a.margin:g}")
    evals = load(a.run)
    g, _ = group(evals)
    out = a.out or os.path.join(a.run, "depth")
    check_writable(os.path.join(out, "depth.md"))
    curves_, text, used, empty = [], [], [], []
    for s in a.src:
        for t in a.tgt:
            nb, rows = sweep(g, s, t, asked)
            if not any(es for _, es in rows):
                empty.append(f"{s}->{t}")
                continue
            refs = {f"R_{b}": g[("c10", b)] for b in ADV if ("c10", b) in g}
            if ("src", s) in g:
                refs[f"source {s} on CIFAR-100"] = g[("src", s)]
            curves_.append(dict(src=s, tgt=t, nb=nb, rows=rows, refs=refs))
            used += [e for _, es in rows for e in es] + [e for es in refs.values() for e in es]
            text += pair_md(g, s, t, nb, rows, refs, a.margin, a.seed_sd)
    used = list({id(e): e for e in used}.values())  # a baseline serves every pair
    if not curves_:
        raise UsageError(f"no evaluated transfer of {', '.join(empty) or 'any source x target'} under {a.run}; run "
                         f"`make depth SRC=... TGT=...` (or evaluate.py on the transfers) first")
    deps = departures(used)
    head = ["# Where robustness lives: accuracy against unfreezing depth\n", banner(deps),
            f"Run `{a.run}`. Figure: [depth.png](depth.png). CIFAR-10 test accuracy (%), mean ± sample std over the n "
            "seeds; in brackets the paper's Table 1 value and the difference, where it has one.\n",
            "Depth, on one scale (`transfer.py --unfreeze`, README): **bK** trains the last K residual blocks "
            "(counted from the output) and the head; the paper's **1** (head only), **12** (all of layer3, as the "
            "authors' code) and **56** (everything) are K = 0, the last stage's blocks (9 on ResNet56) and all "
            "blocks + the stem, and keep their own names.\n"]
    head += [f"Not drawn (no evaluated transfer): {', '.join(empty)}.\n"] if empty else []
    os.makedirs(out, exist_ok=True)
    with output_lock(os.path.join(out, "depth.md")):
        depth_figure(os.path.join(out, "depth.png.tmp"), curves_, a.margin,
                     "Not the paper's protocol (depth.md lists how)" if deps else "")
        os.replace(os.path.join(out, "depth.png.tmp"), os.path.join(out, "depth.png"))
        with open(os.path.join(out, "depth.md.tmp"), "w") as f:
            f.write("\n".join(x for x in head if x) + "\n" + "\n".join(text) + "\n## Departures from the paper\n\n"
                    + ("\n".join(f"- {SETTING[k]}: {h} (paper {p}): {', '.join(rows_)}" for (k, h, p), rows_ in
                                 deps.items()) or "- none: every recorded setting is the paper's protocol") + "\n")
        os.replace(os.path.join(out, "depth.md.tmp"), os.path.join(out, "depth.md"))
    print(f"wrote {out}: depth.md, depth.png ({', '.join(cv['src'] + '->' + cv['tgt'] for cv in curves_)}; "
          f"{len(used)} evaluations)")


def add_depth_args(p):
    d = p.add_argument_group("depth sweep (make depth)")
    d.add_argument("--depth", action="store_true", help="write depth.md and depth.png instead (default --out "
                   "RUN/depth): accuracy against unfreezing depth for each --src x --tgt, and the paper's reading")
    d.add_argument("--src", nargs="*", choices=list(common.OBJECTIVES),
                   help="sources (with --depth; default the paper's three)")
    d.add_argument("--tgt", nargs="*", choices=list(common.OBJECTIVES),
                   help="target trainings (with --depth; default the paper's three)")
    d.add_argument("--unfreeze", nargs="*", help="depths to show, as '–' when not evaluated, beside every depth "
                   "the run evaluated (with --depth)")
    d.add_argument("--margin", type=float, help=f"points below R_src that still count as kept (with --depth; "
                   f"default {DEPTH_MARGIN:g}, claim 4's)")


# ----------------------------------------------------------------------------------------------------------
# Calibration (report.py --calibrate): how often the rule above is wrong, and how often it decides, on simulated
# runs whose truth is known. Per-image results are drawn for two models on the same N images: image j is right
# for a model when RHO * z_j + sqrt(1 - RHO^2) * e_j lies below the model's threshold, z_j a difficulty shared by
# every model and seed, e_j the model's own; each training (model x seed) shifts the model's accuracy by a normal
# spread of sd_true points. The rows go through compare() itself, with the run's seed_spread: with several seeds,
# CAL_ROWS more rows of the same spread stand for the rest of the run in the pool.

RHO = 0.8  # two models at 40% then disagree on about a quarter of the images
CAL_ACC = 40.0  # points: the rhs model's accuracy (WB-PGD-like); lhs = rhs + the true D
CAL_ROWS = 10
CAL_CASES = (  # (name, the true D, margin, kind, k: the claim's comparisons, what each verdict counted means)
    ("D > 0, true D = 0 (on the margin)", 0.0, 0.0, "greater", 1, {"holds": "wrong", "contradicted": "wrong"}),
    (f"|D| < {SIMILAR:g}, true D = {SIMILAR:g} (on the margin)", SIMILAR, SIMILAR, "equivalent", 2,
     {"holds": "wrong"}),
    (f"|D| < {SIMILAR:g}, true D = 0", 0.0, SIMILAR, "equivalent", 2, {"holds": "power", "contradicted": "wrong"}),
    ("claim 1, D > 0, true D = 2.6 (half the paper's)", 2.6, 0.0, "greater", 1,
     {"holds": "power", "contradicted": "wrong"}),
)


def calibrate(runs, seeds, n, sd_true, seed_sd=SEED_SD, rng_seed=0, block=50):
    """{case name: {verdict: fraction of the runs}} for CAL_CASES, all on the same simulated noise."""
    rng = np.random.default_rng(rng_seed)
    inv = np.vectorize(statistics.NormalDist().inv_cdf)
    counts = {c[0]: {} for c in CAL_CASES}
    for start in range(0, runs, block):
        r = min(block, runs - start)
        lat = RHO * rng.standard_normal((r, 1, 1, n), np.float32) \
            + math.sqrt(1 - RHO ** 2) * rng.standard_normal((r, seeds, 2, n), np.float32)
        shift = rng.normal(0, sd_true, (r, seeds, 2))
        others = CAL_ACC + rng.normal(0, sd_true, (r, CAL_ROWS, seeds))  # the pool's other rows: accuracies only
        for name_, truth, margin, kind, k, _ in CAL_CASES:
            p = np.clip(np.array([CAL_ACC + truth, CAL_ACC]) + shift, 0.01, 99.99) / 100
            right = lat < inv(p)[..., None].astype(np.float32)  # (runs, seeds, 2 models, n images)
            for i in range(r):
                ev = [[{"acc": {"wb_pgd": 100 * b.mean()}, "_bits": {"wb_pgd": b}, "per_image": {"n": n}, "n_test": n,
                        "seed": s, "flags": []} for s, b in enumerate(right[i, :, m])] for m in (0, 1)]
                g = {("c10", "lhs"): ev[0], ("c10", "rhs"): ev[1]}
                g.update({("c10", j): [{"acc": {"wb_pgd": a}, "seed": s, "flags": []} for s, a in enumerate(row)]
                          for j, row in enumerate(others[i])})
                v = compare([(1, ev[0], "wb_pgd", "lhs")], [(1, ev[1], "wb_pgd", "rhs")], margin, kind, ALPHA, k,
                            seed_spread(g, "wb_pgd", seed_sd)).verdict
                counts[name_][v] = counts[name_].get(v, 0) + 1
    return {c: {v: x / runs for v, x in vs.items()} for c, vs in counts.items()}


def calibration_table(runs, seed_sd=SEED_SD):
    """The false-verdict and power table of the rule, as report.py --calibrate prints it."""
    lines = [f"Calibration of report.compare: {runs} simulated runs per line; declared seed spread {seed_sd:g} point "
             f"per model (--seed-sd); two models around {CAL_ACC:g}% on N images (image correlation {RHO:g}); with 3 "
             f"seeds the spread is pooled over the pair and {CAL_ROWS} more rows ({2 * (CAL_ROWS + 2)} df). "
             "Percent of runs with each verdict:"]
    lines += [f"  [{i}] {case[0]}, k = {case[4]}: " + "; ".join(f"{v} is {m}" for v, m in case[5].items())
              for i, case in enumerate(CAL_CASES, 1)]
    lines.append("seeds  images  true sd | " + " | ".join(f"[{i}] " + " ".join(
        {"holds": "holds", "contradicted": "contra"}[v] for v in case[5]) for i, case in enumerate(CAL_CASES, 1)))
    for seeds in (1, 3):
        for n in (1_000, 10_000):
            for sd in (0.5, 1.0, 2.0):
                r = calibrate(runs, seeds, n, sd, seed_sd)
                lines.append(f"{seeds:5d}  {n:6,d}  {sd:7.1f} | " + " | ".join(
                    "    " + " ".join(f"{100 * r[case[0]].get(v, 0):5.1f}" for v in case[5]) for case in CAL_CASES))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="run directory; every *.eval.json below it is read")
    p.add_argument("--out", help="report directory (default RUN/report); its report files are replaced, each "
                   "atomically, once the new report is complete; other files in it are left alone")
    p.add_argument("--seed-sd", type=float, default=SEED_SD, help="points: the spread of one model's accuracy "
                   "between trainings that one-seed verdicts assume (PROTOCOL.md; a run with 2 or more seeds of a "
                   "row measures it instead)")
    p.add_argument("--calibrate", action="store_true", help="print how often the rule's verdicts are wrong or "
                   "decisive on simulated runs of 1 and 3 seeds on 1,000 and 10,000 images, and exit")
    p.add_argument("--runs", type=int, default=2000, help="simulated runs per line (with --calibrate)")
    add_depth_args(p)
    a = p.parse_args(argv)
    if not (a.seed_sd >= 0 and math.isfinite(a.seed_sd)) or a.runs < 1:
        raise UsageError(f"--seed-sd must be a non-negative number of points (got {a.seed_sd:g}) and --runs positive")
    given = [f"--{k}" for k in ("src", "tgt", "unfreeze", "margin") if getattr(a, k) is not None]
    if given and not a.depth:  # ignored, it would rewrite the run's report instead of a depth sweep's
        raise UsageError(f"{' '.join(given)} only apply with --depth (make depth); add --depth, or leave "
                         f"{'it' if len(given) == 1 else 'them'} out for the run's report")
    if a.calibrate:
        return print(calibration_table(a.runs, a.seed_sd))
    if not a.run:
        raise UsageError("give --run RUN (the folder of the evaluations), or --calibrate")
    if a.depth:
        a.src, a.tgt = a.src or list(ADV), a.tgt or list(ADV)
        a.unfreeze = a.unfreeze or []
        a.margin = DEPTH_MARGIN if a.margin is None else a.margin
        return depth_report(a)
    evals = load(a.run)
    out = os.path.abspath(a.out or os.path.join(a.run, "report"))
    if os.path.exists(out) and not (os.path.isdir(out) and (os.path.isfile(os.path.join(out, "report.md"))
                                                             or not os.listdir(out))):
        raise UsageError(f"--out {out} exists and is not an earlier report (it has no report.md); pass a new folder "
                         f"or an earlier report's")
    for f in (out, os.path.join(out, "report.md")):  # its folder (the new report is built beside it) and itself
        check_writable(f)  # fails here, before the figures, when it cannot be written
    with output_lock(out):  # a second report.py on the same --out fails at once instead of interleaving
        tmp = tempfile.mkdtemp(prefix=".report-", dir=os.path.dirname(out))
        try:  # built whole first: a failure leaves the old report as it was
            get, top = build(tmp, evals, a.run, a.seed_sd)
            os.makedirs(out, exist_ok=True)
            for f in own_files(out) - set(os.listdir(tmp)):  # an earlier report's figure that is not drawn now
                os.remove(os.path.join(out, f))
            for f in sorted(os.listdir(tmp), key=lambda f: f == "report.md"):  # report.md last: it marks a report
                os.replace(os.path.join(tmp, f), os.path.join(out, f))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(terminal_table(get) + "\n" + (top.replace("> ", "").replace("**", "") if top else ""))
    print(f"wrote {out}: report.md, table1.md/.csv, claims.md and figures from {len(evals)} evaluations")


OWN = ("report.md", "table1.md", "table1.csv", "claims.md", "fig*.png", "curves_*.png", "training.png")


def own_files(folder):
    """The files of `folder` that a report writes (OWN); anything else there (a user's notes) is never touched."""
    return {f for f in os.listdir(folder) if any(fnmatch.fnmatch(f, p) for p in OWN)}


if __name__ == "__main__":
    run_main(main, "interrupted; the report folder is as it was (a new report replaces it only once complete)")

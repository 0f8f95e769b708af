"""The report of a run: Table 1, Figures 2-5, robustness curves, the paper's claims and sanity checks, from the
evaluations of Davchev et al. 2019, "Towards Evaluating and Understanding Robust Optimisation under Transfer"
(arXiv 1905.02675).

    python report.py --run runs/paper                 # writes runs/paper/report/

Reads every *.eval.json under --run (evaluate.py writes X.eval.json beside checkpoint X.pt) and the training log
X.jsonl beside each adversarially trained checkpoint (catastrophic-overfitting check). The report is built in a
temporary folder and swapped in whole: a failure never leaves half a report, and bad input leaves an old one as it
was. Several evaluations of one model with different seeds are shown as mean ± sample std over n.
"""
import argparse
import csv
import glob
import json
import math
import os
import shutil
import statistics
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import UsageError, eps_str, run_main  # noqa: E402

ADV, UNF = ("nat", "fgsm", "pgd"), (1, 12, 56)
COLS = ("clean", "bb_fgsm", "bb_pgd", "wb_fgsm", "wb_pgd")  # Table 1's order
EXTRA = ("wb_strong", "autoattack", "worst")  # evaluate.py's stronger evaluation, beyond the paper
HEAD = {"clean": "Clean", "bb_fgsm": "BB-FGSM", "bb_pgd": "BB-PGD", "wb_fgsm": "WB-FGSM", "wb_pgd": "WB-PGD",
        "wb_strong": "WB-strong", "autoattack": "AutoAttack", "worst": "Worst"}
MISSING = "–"
COLLAPSE = 0.3  # train-batch PGD accuracy below 30% of its best so far (best at least 10%) = collapse
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
DEPARTURES = [
    "Inputs are [0, 1] floats and each model maps them to [-1, 1] as its first operation (the paper rescales the "
    "data): eps 8/256 here is the paper's 0.0625.",
    "'12 layers' unfreezes all of layer3 (9 blocks, 18 convs) plus the head, as the authors' code did; the paper "
    "calls it 'the last block'.",
    "Batch: B = 100 clean + 100 adversarial images per step as the paper states (the authors' job files used 128).",
    "Checkpoints are selected on a 2,500-image validation split of the training set (the authors' code), never on "
    "the test set; schedules, optimiser and epochs follow the authors' job files (the paper gives none).",
]


def name(key, tex=False):
    """R_nat / R_{pgd->pgd} 12, or the paper's mathtext label for figures."""
    if "-" not in key:
        return f"$R_{{{key}}}$" if tex else f"R_{key}"
    s, t, u = key.split("-")
    return rf"$R_{{{s} \rightarrow {t}}}$ {u}" if tex else f"R_{{{s}->{t}}} {u}"


def label(e):  # any evaluated model, for messages
    return {"c10": name(e["_key"]), "src": f"CIFAR-100 source {e['_key']}", "bb": "DenseNet121"}[e["_table"]]


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
        k = (e["_table"], e["_key"], e["seed"])
        if k in seen:
            raise UsageError(f"{seen[k]} and {p} both evaluate {label(e)} seed {e['seed']}; delete one")
        seen[k] = p
        evals.append(e)
    return evals


def check(e, p):
    def bad(why):
        return UsageError(f"{p} is not an evaluation this report can read ({why}); delete it and rerun evaluate.py")
    if not isinstance(e, dict) or not isinstance(e.get("acc"), dict):
        raise bad("no 'acc' object")
    role = e.get("role")
    if role == "transfer":
        if e.get("src") not in ADV or e.get("tgt") not in ADV or e.get("unfreeze") not in UNF:
            raise bad(f"transfer with src={e.get('src')!r} tgt={e.get('tgt')!r} unfreeze={e.get('unfreeze')!r}")
        e["_table"], e["_key"] = "c10", tkey(e["src"], e["tgt"], e["unfreeze"])
    elif role in ("baseline", "source"):
        if e.get("adv") not in ADV:
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
    e["flags"], e["seed"], e["_path"] = flags, e.get("seed") or 0, p
    return e


def collapse(e):
    """Catastrophic overfitting (Wong et al. 2020): common.fit logs each epoch the PGD accuracy of a fixed training
    batch (train_batch_pgd); FGSM training can send it to ~0 while FGSM accuracy stays high. Rule: flag the first
    epoch where it falls below COLLAPSE x its best so far, once that best is at least 10% (below, the 256-image
    monitor is noise). Returns (log found, sentence or None)."""
    cands = [e["_path"][:-len(".eval.json")] + ".jsonl"] + \
        ([e["ckpt"][:-3] + ".jsonl"] if str(e.get("ckpt", "")).endswith(".pt") else [])
    log = next((p for p in cands if os.path.isfile(p)), None)
    if log is None:
        return False, None
    rows = []
    try:
        with open(log) as f:
            for line in f:
                try:
                    r = json.loads(line)
                    rows.append((r.get("epoch"), float(r["train_batch_pgd"])))
                except (ValueError, TypeError, KeyError, AttributeError):
                    continue  # a line without the monitor (a natural run) or cut short
    except OSError:
        return False, None
    best, best_ep = -1.0, None
    for ep, v in rows:
        if v > best:
            best, best_ep = v, ep
        elif best >= 10 and v < COLLAPSE * best:
            kept = e["train"].get("epoch") if isinstance(e.get("train"), dict) else None
            return True, (f"train-batch PGD accuracy fell to {v:.1f}% at epoch {ep} from {best:.1f}% at epoch "
                          f"{best_ep} (last epoch {rows[-1][1]:.1f}%" + (f"; kept checkpoint: epoch {kept})" if kept
                                                                       else ")"))
    return True, None


# ----------------------------------------------------------------------------------------------------------
# Tables

def stat(es, col):
    """(mean, sample std, n, se) over the seeds that have this column, or None. se is the binomial standard error
    of an accuracy measured on the fewest test images among them (points): the test set's own sampling noise,
    which seeds do not show since every seed meets the same images."""
    v = [e["acc"][col] for e in es if e["acc"].get(col) is not None]
    if not v:
        return None
    m, n_test = statistics.mean(v), min(e.get("n_test") or 10_000 for e in es)
    return m, statistics.stdev(v) if len(v) > 1 else 0.0, len(v), 100 * math.sqrt(m / 100 * (1 - m / 100) / n_test)


def fmt(s, paper=None, nrow=1):
    """One value, or mean ± std (with n when it differs from the row's), then (paper, difference) if known."""
    txt = MISSING if s is None else f"{s[0]:.1f}" if s[2] == 1 else f"{s[0]:.1f} ± {s[1]:.1f}" + (
        f" (n={s[2]})" if s[2] != nrow else "")
    return txt if paper is None else txt + (f" ({paper:.1f}, {s[0] - paper:+.1f})" if s else f" ({paper:.1f})")


def md_table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]) + "\n"


def tables(g, flags, extra):
    """table1.md's text and table1.csv's rows (every column, missing as MISSING)."""
    md, rows = [], []
    for k in ROWS:
        es, paper, fl = g.get(("c10", k), []), PAPER.get(k, (None,) * 5), flags.get(("c10", k), [])
        md.append([f"`{name(k)}`", len(es)] + [fmt(stat(es, c), p, len(es)) for c, p in zip(COLS, paper)]
                  + [fmt(stat(es, c), None, len(es)) for c in extra] + [", ".join(fl)])
        r = {"network": name(k), "key": k, "n_seeds": len(es)}
        for c, p in zip(COLS + EXTRA, paper + (None,) * len(EXTRA)):
            s = stat(es, c)
            r.update({c: f"{s[0]:.2f}" if s else MISSING, c + "_std": f"{s[1]:.2f}" if s and s[2] > 1 else MISSING,
                      c + "_n": s[2] if s else 0})
            if c in COLS:
                r[c + "_paper"] = MISSING if p is None else f"{p:.1f}"
                r[c + "_diff"] = f"{s[0] - p:+.2f}" if s and p is not None else MISSING
        rows.append({**r, "flags": " ".join(fl)})
    src = []
    for k in ADV:
        es = g.get(("src", k), [])
        src.append([f"`{k}`", len(es)] + [fmt(stat(es, c), p, len(es)) for c, p in zip(SRC_COLS, PAPER_SRC[k])]
                   + [", ".join(flags.get(("src", k), []))])
    dn = g.get(("bb", "densenet"), [])
    text = ("# Table 1: CIFAR-10 test accuracy (%)\n\nEach cell: reproduced (mean ± sample std over the n seeds "
            f"when n > 1) (the paper's value, reproduced − paper); {MISSING} = not run. The last 6 rows are transfers "
            "the paper did not show.\n\n"
            + md_table(["Network", "n"] + [HEAD[c] for c in COLS + extra] + ["flags"], md)
            + "\n## CIFAR-100 sources (CIFAR-100 test set; paper: the authors' result files)\n\n"
            + md_table(["Source", "n"] + [HEAD[c] for c in SRC_COLS] + ["flags"], src)
            + f"\nDenseNet121 (black-box source), CIFAR-10 clean: {fmt(stat(dn, 'clean'), PAPER_DENSENET, len(dn))}"
            + (f" (n={len(dn)})" if len(dn) > 1 else "") + "\n")
    return text, rows


# ----------------------------------------------------------------------------------------------------------
# Claims (PROTOCOL.md, "The paper's claims"). A comparison is (text, lhs, rhs, margin), each side a list of
# (weight, row, column) terms. It holds when lhs - rhs > margin + spread, the spread being the weighted sum of the
# terms' uncertainties: each sqrt(seed std^2 + binomial se^2), so that neither seed noise nor the finite test set
# can make a claim hold.

def _mean3(fmt_key, col):
    return [(1 / 3, fmt_key.format(u), col) for u in UNF]


CLAIMS = [
    ("R_{pgd->pgd} 56 beats R_pgd against WB-PGD (the headline: 41.3 vs 36.1, +5.2)",
     [("R_{pgd->pgd} 56 WB-PGD > R_pgd WB-PGD", [(1, "pgd-pgd-56", "wb_pgd")], [(1, "pgd", "wb_pgd")], 0)]),
    ("PGD sources transfer robustness better than FGSM sources (pgd->nat vs fgsm->nat, averaged over 1/12/56)",
     [(f"mean R_{{pgd->nat}} {HEAD[c]} > mean R_{{fgsm->nat}} {HEAD[c]}", _mean3("pgd-nat-{}", c),
       _mean3("fgsm-nat-{}", c), 0) for c in ("wb_pgd", "bb_pgd")]),
    ("Natural target training of a PGD source: 12 keeps nearly all BB-PGD robustness (within 2 points of R_pgd), "
     "56 loses much of it (more than 10 points)",
     [("R_{pgd->nat} 12 BB-PGD > R_pgd BB-PGD - 2", [(1, "pgd-nat-12", "bb_pgd")], [(1, "pgd", "bb_pgd")], -2),
      ("R_pgd BB-PGD - R_{pgd->nat} 56 BB-PGD > 10", [(1, "pgd", "bb_pgd")], [(1, "pgd-nat-56", "bb_pgd")], 10)]),
    ("A natural source is not made robust by adversarially training the last stage only (nat->pgd 12: WB-PGD "
     "under half of R_pgd's)",
     [("R_pgd WB-PGD / 2 > R_{nat->pgd} 12 WB-PGD", [(0.5, "pgd", "wb_pgd")], [(1, "nat-pgd-12", "wb_pgd")], 0)]),
    ("FGSM in source and target (fgsm->fgsm, every strategy) does worse against WB attacks than R_fgsm",
     [(f"R_fgsm {HEAD[c]} > R_{{fgsm->fgsm}} {u} {HEAD[c]}", [(1, "fgsm", c)], [(1, tkey("fgsm", "fgsm", u), c)], 0)
      for u in UNF for c in ("wb_fgsm", "wb_pgd")]),
]
CLAIMS_RULE = (
    "Rule: a comparison holds when the difference exceeds its margin plus the spread, the sum of the uncertainties "
    "of the numbers compared (weighted as they enter); each uncertainty is sqrt(std^2 + se^2), std the sample "
    "std over seeds (0 with one seed) and se the binomial standard error of an accuracy on the number of test "
    "images (sqrt(p(1-p)/N)): a claim holds only beyond the seed spread and the test set's sampling noise. A "
    "claim holds when all its comparisons hold, and is 'not run' when a model it needs is missing. Claim 2 "
    "averages the three strategies (the spread of the average: the mean of the uncertainties). The paper's own "
    "numbers go through the same rule (with no uncertainty), as a check of the rule.")


def verdict(tests, get):
    """('holds' | 'does not hold' | 'not run (missing ...)', [(lhs, rhs, ok)]), sides as (value, spread) or None."""
    out, missing = [], []
    for _, *sides, margin in tests:
        lr = []
        for terms in sides:
            vals = [get(k, c) for _, k, c in terms]
            missing += [f"{name(k)} {HEAD[c]}" for (_, k, c), v in zip(terms, vals) if v is None]
            lr.append(None if None in vals else (sum(w * v[0] for (w, _, _), v in zip(terms, vals)),
                                                 sum(abs(w) * math.hypot(v[1], v[3]) for (w, _, _), v in
                                                     zip(terms, vals))))
        l, r = lr
        out.append((l, r, None if None in lr else l[0] - r[0] > margin + l[1] + r[1]))
    if missing:
        return f"not run (missing: {', '.join(dict.fromkeys(missing))})", out
    return ("holds" if all(ok for *_, ok in out) else "does not hold"), out


def claims_md(get):
    def paper(k, c):
        v = PAPER.get(k, (None,) * 5)[COLS.index(c)]
        return None if v is None else (v, 0.0, 1, 0.0)

    def show(s):
        return MISSING if s is None else f"{s[0]:.1f}" + (f" ± {s[1]:.1f}" if s[1] else "")
    text, summary = ["# The paper's claims, checked\n", CLAIMS_RULE + "\n"], []
    for i, (claim, tests) in enumerate(CLAIMS, 1):
        (v, res), (pv, pres) = verdict(tests, get), verdict(tests, paper)
        summary.append((i, claim, v))
        rows = [[t[0], f"{show(pl)} vs {show(pr)}", f"{show(l)} vs {show(r)}", {None: MISSING, True: "yes",
                                                                                 False: "no"}[ok]]
                for t, (pl, pr, _), (l, r, ok) in zip(tests, pres, res)]
        text += [f"## Claim {i}: {claim}\n", md_table(["comparison", "paper", "reproduced", "holds"], rows),
                 f"**Verdict: {v}** (the paper's numbers: {pv})\n"]
    text.append("Claim 6 of PROTOCOL.md (the heatmaps) is the figures themselves: fig2.png - fig5.png.\n")
    return "\n".join(text), summary


# ----------------------------------------------------------------------------------------------------------
# Figures
def normalise(m):
    """Per-column min-max over the rows shown, the paper's heatmap scale: 1 = best row, 0 = worst. Missing (NaN)
    stays NaN; a constant column is all 1 (every row is the best)."""
    m = np.asarray(m, float)
    out = np.full_like(m, np.nan)
    for j in range(m.shape[1]):
        ok = ~np.isnan(m[:, j])
        if ok.any():
            lo, hi = m[ok, j].min(), m[ok, j].max()
            out[ok, j] = 1.0 if hi - lo < 1e-9 else (m[ok, j] - lo) / (hi - lo)
    return out


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
        else:
            ax.text(j, i, f"{raw[i, j]:.1f}", ha="center", va="center", fontsize=8.5,
                    color="white" if norm[i, j] < 0.55 else "black")
    for y in np.cumsum([len(b) for b in blocks])[:-1]:
        ax.axhline(y - .5, color="white", lw=3)
    for x in [1, 3] + ([5] if len(cols) > 5 else []):  # Clean | BB | WB | stronger evaluation
        ax.axvline(x - .5, color="white", lw=3)
    ax.set_xticks(range(len(cols)), [HEAD[c] for c in cols], fontsize=9)
    ax.set_yticks(range(len(keys)), [name(k, tex=True) for k in keys], fontsize=10)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    return im


def figure(path, panels, cols, get):
    """panels: [(title, blocks of row keys)], white lines between blocks. Returns False if no cell has data."""
    panels = [(t, [b for b in blocks if b]) for t, blocks in panels]
    if not any(get(k, c) for _, bl in panels for b in bl for k in b for c in cols):
        return False
    nrows = max(sum(map(len, bl)) for _, bl in panels)
    fig, axes = plt.subplots(1, len(panels), squeeze=False, layout="constrained",
                             figsize=(0.8 * len(cols) * len(panels) + 1.8 * len(panels) + 1, 0.32 * nrows + 0.9))
    for ax, (title, blocks) in zip(axes[0], panels):
        im = heatmap(ax, blocks, cols, get)
        if title:
            ax.set_title(title, fontsize=11, pad=22)
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.04 if len(panels) > 1 else 0.06, pad=0.02,
                 label="normalised per column (1 = best, 0 = worst)")
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return True


def curves(path, title, keys, g, ref=None):
    """Accuracy against eps, one line per model (the mean over seeds at each eps; colour = source, line = strategy),
    R_ref in black for comparison. False, and nothing written, when no model has a curve."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ticks = set()
    for k in ([ref] if ref else []) + keys:
        pts = {}
        for e in g.get(("c10", k), []):
            cv = e.get("curve") or {}
            for x, y in zip(cv.get("eps_256") or [], cv.get("acc") or []):
                pts.setdefault(x, []).extend([] if y is None else [y])
        xs = sorted(x for x in pts if pts[x])
        ticks.update(xs)
        u = k.split("-")[-1]
        kw = dict(color="black", lw=1, marker="s", label=name(k, True) + " (no transfer)") if k == ref else \
            dict(color=COLOUR[k.split("-")[0]], ls={"1": ":", "12": "--"}.get(u, "-"), marker="o", label=name(k, True))
        if xs:
            ax.plot(xs, [statistics.mean(pts[x]) for x in xs], ms=3.5, **kw)
    if ticks:
        ax.set_xscale("symlog", linthresh=1, linscale=0.5)  # eps 0 and the doublings 1..32 evenly spaced
        ax.set_xticks(sorted(ticks), [f"{x:g}" for x in sorted(ticks)])
        ax.axvline(8, color="grey", lw=0.8, ls=":")
        ax.text(8, 98, "paper's eps ", fontsize=8, color="grey", va="top", ha="right")
        ax.set(xlabel="eps (/256 on [0,1]; x2 on the paper's [-1,1] scale)", ylabel="white-box PGD accuracy (%)",
               ylim=(0, 100), title=title)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return bool(ticks)


# ----------------------------------------------------------------------------------------------------------
# The report

def sanity(evals):
    """[(eval, check, detail)]: the evaluations' own flags, the eps scales, collapse in the training logs; and the
    adversarially trained models whose log was not found."""
    out, nolog = [], []
    for e in evals:
        found = [(str(f["check"]), str(f.get("detail", ""))) for f in e["flags"]]
        eps, eps2 = e.get("eps"), e.get("eps_paper_scale")
        if isinstance(eps, (int, float)) and isinstance(eps2, (int, float)) and abs(eps2 - 2 * eps) > 1e-9:
            found.append(("eps-scale", f"eps {eps} on [0,1] but eps_paper_scale {eps2}, not twice it"))
        if e.get("adv") in ADV[1:] or e.get("tgt") in ADV[1:]:
            has_log, msg = collapse(e)
            nolog += [] if has_log else [f"{label(e)} seed {e['seed']}"]
            found += [("pgd-collapse", msg)] if msg else []
        out += [(e, c, d) for c, d in found]
    return out, nolog


def heatmaps(get):
    """{figure: (caption, [(panel title, blocks of rows)])}: white lines between blocks."""
    def best(cands):  # Figure 3's choice on reported numbers (not a model selection): WB-PGD, ties by clean
        have = [k for k in cands if get(k, "wb_pgd")]
        return [max(have, key=lambda k: (get(k, "wb_pgd")[0], (get(k, "clean") or (0,))[0]))] if have else []
    table1 = []
    for k in TABLE1:  # each baseline alone, then each source/target triple
        if "-" not in k or k.endswith("-1"):
            table1.append([])
        table1[-1].append(k)
    return {
        "fig2": ("Figure 2: transfer without target defence: the baselines, then strategies 1, 12, 56",
                 [(None, [list(ADV)] + [[tkey(s, "nat", u) for s in ADV] for u in UNF])]),
        "fig3": ("Figure 3: per strategy, the best transfer with FGSM and with PGD target training (by WB-PGD) "
                 "against the baselines", [(None, [list(ADV), ["nat-nat-56"]] + [
                     sum((best([tkey(s, t, u) for s in ADV]) for t in ADV[1:]), []) for u in UNF])]),
        "fig4": ("Figure 4: all rows of Table 1", [(None, table1)]),
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


def build(out, evals, run):
    g, get = group(evals)
    checks, nolog = sanity(evals)
    flags = {}
    for e, c, _ in checks:
        if c not in flags.setdefault((e["_table"], e["_key"]), []):
            flags[(e["_table"], e["_key"])].append(c)
    extra = tuple(c for c in EXTRA if any(get(k, c) for k in ROWS))
    t1, rows = tables(g, flags, extra)
    claims, summary = claims_md(get)
    with open(os.path.join(out, "table1.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    drawn = {f: (cap, figure(os.path.join(out, f + ".png"), panels, COLS + (extra if f == "fig4" else ()), get))
             for f, (cap, panels) in heatmaps(get).items()}
    for t in (None,) + ADV:
        f, title = ("curves_baselines", "Baselines (no transfer)") if t is None else \
            (f"curves_tgt_{t}", f"Transfers with {t} target training")
        keys = list(ADV) if t is None else [tkey(s, t, u) for s in ADV for u in UNF]
        drawn[f] = (title, curves(os.path.join(out, f + ".png"), title, keys, g, t))

    missing = [name(k) for k in ROWS if ("c10", k) not in g]
    partial = [f"{name(k)} ({', '.join(HEAD[c] for c in COLS if not get(k, c))})" for k in ROWS
               if ("c10", k) in g and not all(get(k, c) for c in COLS)]
    deps = list(DEPARTURES)
    for e in evals:
        d = e.get("departures") or []
        deps += [str(x) for x in ([d] if isinstance(d, str) else d) if str(x) not in deps]
    text = ["# Reproduction report: Davchev et al. 2019 (arXiv 1905.02675)\n",
            f"Run `{run}`. Tables: table1.md, table1.csv; the claims in detail: claims.md.\n",
            settings(evals), "## Results\n", t1.split("\n", 2)[2].replace("\n## ", "\n### "),
            "\n## The paper's claims\n", md_table(["claim", "statement", "verdict"], summary),
            "\nRules: [claims.md](claims.md).\n\n## Figures\n",
            "Heatmaps as in the paper: each column min-max normalised over the rows shown (1 = best, 0 = worst), the "
            "raw accuracy (%) in each cell, white lines between row groups and between Clean | BB | WB"
            + (" | the stronger evaluation (Figure 4 only)" if extra else "") + f"; grey hatched {MISSING} = not run;"
            " several seeds: the mean. Figure 3's rows per strategy: the best transfer by WB-PGD (ties: clean) among "
            "those with FGSM target training and among those with PGD target training. Curves: the mean over seeds."
            "\n"]
    text += [f"**{cap}**\n\n![]({f}.png)\n" if ok else f"- {f}.png: not drawn, no data\n"
             for f, (cap, ok) in drawn.items()]
    text += ["## What was not run\n", f"- {len(missing)} of the {len(ROWS)} CIFAR-10 rows have no evaluation: "
             + ", ".join(missing) if missing else "- every CIFAR-10 row has an evaluation"]
    text += [f"- rows with missing columns: {'; '.join(partial)}"] if partial else []
    text += [f"- CIFAR-100 source {k}: no evaluation" for k in ADV if ("src", k) not in g]
    text += ["- DenseNet121: no evaluation"] if ("bb", "densenet") not in g else []
    text += ["- the stronger evaluation (WB-strong, Worst): not run"] if not extra else []
    text += ["\n## Sanity checks\n", "The evaluations' flags, the eps scales, and catastrophic overfitting: an "
             f"adversarially trained model's train-batch PGD accuracy falling below {COLLAPSE:.0%} of its best "
             "earlier value (a best of at least 10%). Each flagged row:\n"]
    text += [f"- **{label(e)}** seed {e['seed']}: `{c}`: {d} ({os.path.relpath(e['_path'], run)})"
             for e, c, d in checks] or ["- no flags"]
    text += [f"- no training log beside {len(nolog)} adversarially trained models, collapse not checked: "
             + ", ".join(nolog)] if nolog else []
    text += ["\n## Departures from the paper\n"] + [f"- {d}" for d in deps]
    for fname, body in (("table1.md", t1), ("claims.md", claims), ("report.md", "\n".join(text) + "\n")):
        with open(os.path.join(out, fname), "w") as f:
            f.write(body)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory; every *.eval.json below it is read")
    p.add_argument("--out", help="report directory (default RUN/report); replaced whole, atomically")
    a = p.parse_args(argv)
    evals = load(a.run)
    out = os.path.abspath(a.out or os.path.join(a.run, "report"))
    if os.path.exists(out) and not (os.path.isdir(out) and (os.path.isfile(os.path.join(out, "report.md"))
                                                             or not os.listdir(out))):
        raise UsageError(f"--out {out} exists and is not an earlier report; it would be replaced whole, so pass a "
                         f"new folder or an earlier report's")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".report-", dir=os.path.dirname(out))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the report from the rest of the group
    try:
        build(tmp, evals, a.run)
        if os.path.exists(out):  # os.replace cannot put a folder over a non-empty one: move the old one aside
            os.rename(out, tmp + ".old")
        os.rename(tmp, out)
        shutil.rmtree(tmp + ".old", ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.exists(tmp + ".old") and not os.path.exists(out):
            os.rename(tmp + ".old", out)
        raise
    print(f"wrote {out}: report.md, table1.md/.csv, claims.md and figures from {len(evals)} evaluations")


if __name__ == "__main__":
    run_main(main)

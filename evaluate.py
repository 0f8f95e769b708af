"""Evaluate a checkpoint on the test set: Table 1's five columns, plus a stronger evaluation beside them.

    python evaluate.py --craft-from runs/paper/blackbox/densenet121_s0.pt --out runs/paper/blackbox/examples.pt
    python evaluate.py --ckpt runs/paper/transfer/pgd-pgd-12_s0.pt --blackbox runs/paper/blackbox/examples.pt \
        --out runs/paper/transfer/pgd-pgd-12_s0.eval.json

Table 1 (Sec. 3), in its order: Clean, BB-FGSM, BB-PGD, WB-FGSM, WB-PGD, accuracy in % at eps 8/256 with the
true labels. White-box (WB) attacks use the evaluated model's own gradients; black-box (BB) examples are
crafted once on the naturally trained DenseNet121 (--craft-from) and reused by every evaluation.

Beyond the paper (Carlini et al. 2019, "On Evaluating Adversarial Robustness"): WB-strong, PGD with random start,
50 steps, 10 restarts keeping the per-example worst case; Worst, an example counts only if it survives every
attack run on it; a robustness curve of PGD-7 accuracy against eps; and sanity checks that flag what a sound
evaluation never shows (e.g. accuracy rising with eps, the signature of gradient masking).

Long runs print a progress line at most every 10 seconds, each line named by its --out. An evaluation records
its inputs (the checkpoint's and the examples' contents, eps, steps, test images, the stronger attacks' settings,
data): rerun with the same inputs it does nothing, with others it refuses and names the difference; --force
redoes it. Two runs on one --out cannot overlap: the second stops at once.
"""
import argparse
import base64
import functools
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import torch

import common as c
import engine

CURVE_EPS = [0, 1, 2, 4, 8, 16, 32]  # /256
TOL = 1.0  # percentage points of slack in the sanity checks, at least; more on few test images (noise_tol)
# A curve is judged "not near zero" only when it reaches 32/256 (4x the paper's eps, 0.125 on [0, 1]): there an
# L-inf perturbation can paint over any CIFAR image, so a model still right on more than a few percent hides
# its gradients. A curve stopping earlier (e.g. 16/256) may leave real robustness standing.
MAX_EPS_CHECK = 32
PROGRESS_S = 10  # a progress line at most this often, checked after each batch


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint to evaluate")
    p.add_argument("--blackbox", help="black-box examples file written by --craft-from (CIFAR-10 models)")
    p.add_argument("--craft-from", help="craft the black-box examples from this DenseNet checkpoint into --out")
    p.add_argument("--out", required=True, help="X.eval.json (evaluation) or the examples file (--craft-from)")
    p.add_argument("--force", action="store_true", help="redo the work even if --out exists (default: nothing to do)")
    p.add_argument("--dataset", choices=list(c.NUM_CLASSES), help="test set (default: the checkpoint's)")
    p.add_argument("--data-dir", default="data", help="torchvision root, a folder of *_test.npz, or 'synthetic'")
    p.add_argument("--limit", type=int, default=None, help="first N test images only (quick runs)")
    p.add_argument("--eps", type=float, default=8, help="L-inf budget in /256 pixel units (paper: 8)")
    p.add_argument("--steps", type=int, default=7, help="PGD steps, step size eps/4 (paper: 7)")
    p.add_argument("--strong", action=argparse.BooleanOptionalAction, default=True,
                   help="also run PGD with random start and restarts (WB-strong) and the worst case")
    p.add_argument("--strong-steps", type=int, default=50)
    p.add_argument("--restarts", type=int, default=10)
    p.add_argument("--curve", action=argparse.BooleanOptionalAction, default=True,
                   help="the robustness curve: PGD accuracy at each of --curve-eps")
    p.add_argument("--curve-eps", type=float, nargs="+", default=CURVE_EPS, help="eps of the curve, /256")
    p.add_argument("--autoattack", action="store_true", help="also AutoAttack (needs the optional torchattacks)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    p.add_argument("--device", default="auto")
    p.add_argument("--capture", choices=engine.CAPTURE, default="auto", help="CUDA graphs for the attacks: auto (where "
                   "they can be; a failure goes on eagerly), on (a failure stops the run), off (eager)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="the models' precision on CUDA (default bf16, autocast; the CPU runs fp32)")
    p.add_argument("--check", action="store_true", help="check the flags and stop: nothing is read, evaluated or "
                   "written (make checks every stage's command this way before its first job)")
    return p.parse_args(argv)


def say(line):
    """A line of this run on stdout, named by its output (several evaluations of `make -j` share a terminal)."""
    print(f"[{WHO}] {line}", flush=True)


WHO = "evaluate"  # main() sets it to --out's file name


class Progress:
    """Long work shows progress: after a batch, one line if PROGRESS_S seconds have passed since the last (so a
    line after every batch when batches are slower): the attack, images done / total, elapsed and time left.
    Time left extrapolates the work done, counted in gradient steps per image (restarts counted in full, so it
    errs long)."""

    def __init__(self, n, work):
        self.n, self.work, self.done = n, work, 0
        self.t0 = self.last = time.time()

    def __call__(self, what, images, work):
        self.done += work
        now = time.time()
        if now - self.last >= PROGRESS_S:
            self.last = now
            left = (now - self.t0) * max(0, self.work - self.done) / max(self.done, 1)
            say(f"{what}: {images}/{self.n} images | {engine._fmt_time(now - self.t0)} elapsed | "
                f"about {engine._fmt_time(left)} left")


def settings(a):
    """The evaluation's settings an evaluation column's attack receives (common.Column)."""
    return {"steps": a.steps, "strong_steps": a.strong_steps, "restarts": a.restarts, "seed": a.seed}


def bind(attack, name, eps, s):
    """An evaluation column's attack as engine.eval_step takes it: f(model, x, y) -> inputs, named for messages."""
    f = lambda model, x, y: attack(model, x, y, eps, s)  # noqa: E731
    f.name = name
    return f


def noise_tol(clean, n):
    """Slack for comparing two accuracies on the same n images: TOL, or two binomial standard errors of the clean
    accuracy where that is more (on 50 images one image is 2 points: noise, not gradient masking)."""
    return max(TOL, 2 * c.binomial_se(clean, n))


def chance_level(acc, n, classes):
    """True when an accuracy of acc % on n images is not above chance (100/classes %) by more than two binomial
    standard errors: the model has learnt nothing the test set can show."""
    chance = 100 / classes
    return acc <= chance + 2 * c.binomial_se(chance, n)


def path_tol(n, batch_size, captured):
    """Points by which two numbers of one evaluation may differ though they measure the same thing, when they
    came from different captured graphs (engine.eval_step): each graph may disagree with eager predictions on
    max(1, CHECK_FRAC of a batch) images of every batch (the self-check's tolerance; under bf16 two graphs pick
    their own kernels), so two graphs on twice that. 0 when every path ran eagerly (the same computation, bit for
    bit)."""
    if not captured or not n:
        return 0.0
    return 2 * 100 * sum(math.floor(max(1, engine.CHECK_FRAC * min(batch_size, n - i)))
                         for i in range(0, n, batch_size)) / n


def paired_se(a, b):
    """Standard error (points) of the accuracy gap a - b of two columns on the same images, from which images
    each got right (McNemar's paired form), with two images added at each extreme as report.compare adds them."""
    d = np.concatenate([np.asarray(a, float) - np.asarray(b, float), [1, 1, -1, -1]])
    return 100 * d.std() / math.sqrt(len(d))


def sanity_flags(acc, curve=None, tol=TOL, n=None, classes=None, pred_counts=None, bb_source=None, ok=None,
                 path=0.0):
    """What a sound evaluation never shows; each flag names the check and the numbers that tripped it.

    n (test images) and classes enable the chance-level check, pred_counts (clean predictions per class) the
    constant-class one, bb_source ({clean, fgsm, pgd: the black-box source's accuracy on the clean images and on
    its own FGSM and PGD examples, n: images}) the check that the black-box examples come from a model that learnt
    something and that they attack it; ok ({column: which images were right}) pairs the gap of WB-strong to
    WB-PGD. path: points two numbers may differ by when they came from different captured graphs (path_tol):
    added to every comparison, so that the flags cannot fire on a sound evaluation run captured."""
    f = []

    def flag(check, detail):
        f.append({"check": check, "detail": detail})
    e, a = (curve["eps_256"], curve["acc"]) if curve else ([], [])
    # a broken model first: every other number of its row means nothing
    if pred_counts and sum(pred_counts) and max(pred_counts) > 0.9 * sum(pred_counts):
        k = max(range(len(pred_counts)), key=pred_counts.__getitem__)
        flag("constant-class", f"class {k} takes {100 * pred_counts[k] / sum(pred_counts):.0f}% of the clean "
                               f"predictions: a (near-)constant predictor, its attacked accuracies are that class's "
                               f"share of the test set, not robustness")
    if n and classes and chance_level(acc["clean"], n, classes):
        flag("chance-level", f"clean {acc['clean']:.1f}% is not above chance ({100 / classes:g}% for {classes} "
                             f"classes) by more than two standard errors on {n} images: the model learnt nothing "
                             f"measurable")
    if bb_source and chance_level(bb_source["clean"], bb_source["n"], 10):
        flag("bb-source-at-chance", f"the black-box source is at chance ({bb_source['clean']:.1f}% clean on "
                                    f"{bb_source['n']} images): its examples are noise, not black-box attacks")
    elif bb_source:  # examples that do not fool their own source are no attack on anything else either
        weak = [k for k in ("fgsm", "pgd") if bb_source.get(k) is not None and bb_source[k] >= bb_source["clean"]
                - noise_tol(bb_source["clean"], bb_source["n"]) - path]
        if weak:
            flag("bb-source-at-chance", f"the black-box source keeps {bb_source[weak[0]]:.1f}% on its own "
                                        f"{weak[0].upper()} examples ({bb_source['clean']:.1f}% clean on "
                                        f"{bb_source['n']} images): they do not attack it, so they are no black-box "
                                        f"attack on another model")
    if 0 in e and abs(a[e.index(0)] - acc["clean"]) > path + 1e-9:
        flag("eps0-not-clean", f"PGD at eps 0 gives {a[e.index(0)]:.1f}% but clean is {acc['clean']:.1f}%"
                               + (f", more than the {path:.1f} points two captured graphs may differ by" if path
                                  else "") + ": the evaluation is not deterministic or the attack changes inputs "
                                             "at eps 0")
    tol += path
    for i in range(1, len(e)):
        if a[i] > a[i - 1] + tol:
            flag("rises-with-eps", f"PGD accuracy rises from {a[i - 1]:.1f}% at eps {e[i - 1]}/256 to {a[i]:.1f}% "
                                   f"at {e[i]}/256: gradient masking, the attack is not finding the worst case")
            break
    if e and e[-1] >= MAX_EPS_CHECK and a[-1] > 5 + tol:
        flag("not-zero-at-max-eps", f"{a[-1]:.1f}% still correct under PGD at eps {e[-1]}/256, where every "
                                    f"image should be breakable: the gradients are uninformative (masking)")
    if acc.get("wb_pgd") is not None and acc["wb_pgd"] > acc["wb_fgsm"] + tol:
        flag("pgd-above-fgsm", f"WB-PGD {acc['wb_pgd']:.1f}% > WB-FGSM {acc['wb_fgsm']:.1f}%: the iterative attack "
                               f"is weaker than one step (gradient masking)")
    if acc.get("wb_strong") is not None and acc["wb_strong"] > acc["wb_pgd"] + tol:
        flag("strong-above-pgd", f"WB-strong {acc['wb_strong']:.1f}% > WB-PGD-7 {acc['wb_pgd']:.1f}%: more steps "
                                 f"and restarts should never do worse")
    # The paper's WB-PGD column is PGD-7 without restarts; a far lower WB-strong means PGD-7 stopped short. Both
    # run on the same images: their gap's noise is the paired one (without the images, the sum of the two binomial
    # standard errors bounds it whatever the pairing)
    se = 0.0 if acc.get("wb_strong") is None else paired_se(ok["wb_pgd"], ok["wb_strong"]) if ok else \
        c.binomial_se(acc["wb_pgd"], n) + c.binomial_se(acc["wb_strong"], n) if n else 0.0
    gap = max(2.0, 2 * se) + path
    if acc.get("wb_strong") is not None and acc["wb_strong"] < acc["wb_pgd"] - gap:
        flag("pgd-not-converged", f"WB-strong {acc['wb_strong']:.1f}% is more than {gap:.1f} points below WB-PGD-7 "
                                  f"{acc['wb_pgd']:.1f}%: PGD-7 overstates robustness, the attack has not converged")
    for k in ("fgsm", "pgd"):
        bb, wb = acc.get("bb_" + k), acc.get("wb_" + k)
        if bb is not None and wb is not None and bb + tol < wb:
            flag("bb-below-wb", f"BB-{k.upper()} {bb:.1f}% < WB-{k.upper()} {wb:.1f}%: a transferred attack beats the "
                                f"white-box one, so the white-box gradients are misleading (masking)")
    # a white-box attack (or a point of the curve) scoring above the clean input: label leaking
    attacked = [(k, acc.get(k)) for k in ("wb_fgsm", "wb_pgd")] + \
        [(f"PGD at eps {x}/256", y) for x, y in zip(e, a) if x > 0]
    for k, v in attacked:
        if v is not None and v > acc["clean"] + tol:
            flag("adv-above-clean", f"{k} {v:.1f}% > clean {acc['clean']:.1f}%: label leaking, the model "
                                    f"reads the perturbation")
            break
    # black-box examples are crafted on another model: above clean they help this model instead of attacking it
    for k in ("bb_fgsm", "bb_pgd"):
        v = acc.get(k)
        if v is not None and v > acc["clean"] + tol:
            flag("bb-above-clean", f"{k} {v:.1f}% > clean {acc['clean']:.1f}%: the DenseNet's examples help this model "
                                   f"rather than attack it; not label leaking (they are not crafted on it), but no "
                                   f"black-box robustness can be read from them")
            break
    return f


def craft_blackbox(a, ck, device):
    """Craft FGSM and PGD examples once on the black-box source (checkpoint ck), for every evaluation to reuse."""
    if ck["num_classes"] != 10:
        raise c.UsageError(f"--craft-from {a.craft_from} has {ck['num_classes']} classes; the black-box source is "
                           f"the CIFAR-10 DenseNet121 of train_blackbox.py")
    model = c.model_from_checkpoint(ck, device, f"--craft-from {a.craft_from}")
    if ck["arch"] != "densenet121":  # allowed for ad-hoc studies, but it is not Table 1's black-box source
        print(f"warning: --craft-from {a.craft_from} is a {ck['arch']}, not the DenseNet121 of the paper's "
              f"black-box attacks; the BB columns evaluated with these examples are not the paper's", file=sys.stderr,
              flush=True)
    x, y = load_test("cifar10", a)
    eps = a.eps / 256
    out = {"dataset": "cifar10", "source": a.craft_from, "source_arch": ck["arch"], "eps": eps, "steps": a.steps,
           "n_test": len(y), "data_dir": a.data_dir, "y": y.cpu(), "inputs": inputs(a), **engine.provenance(device)}
    t0 = time.time()
    cols, s = columns(a), settings(a)
    progress = Progress(len(y), len(y) * sum(col.cost(s) for col in cols.values()))
    with engine.output_lock(a.out):
        for name, col in cols.items():  # bb_X: its examples are x_X
            kind, adv, done = name[3:], [], 0
            for xb, yb in c.batches(x, y, a.batch_size):
                adv.append(col.attack(model, xb, yb, eps, s).cpu())
                done += len(yb)
                progress(f"crafting {col.head}", done, len(yb) * col.cost(s))
            out["x_" + kind] = torch.cat(adv)
            pred = torch.cat([c.predict(model, xb.to(device)) for xb in out["x_" + kind].split(a.batch_size)])
            out["source_acc_" + kind] = 100 * (pred == y).float().mean().item()  # in batches: 10,000 at once is GiBs
        out["source_acc_clean"] = engine.accuracy(model, x, y)
        engine.atomic_save(out, a.out)
    say(f"crafted {len(y)} black-box examples ({', '.join(col.head for col in cols.values())}) on {ck['arch']} "
        f"({c.eps_str(eps)}) in {time.time() - t0:.0f}s: source accuracy clean {out['source_acc_clean']:.1f}%, on "
        f"its own examples " + ", ".join(f"{col.head} {out['source_acc_' + k[3:]]:.1f}%" for k, col in cols.items())
        + f"; wrote {a.out}")


def load_test(dataset, a):
    x, y = c.load_split(dataset, a.data_dir, train=False)
    if a.limit:
        x, y = x[:a.limit], y[:a.limit]
    dev = engine.pick_device(a.device)
    return x.to(dev), y.to(dev)


ROLES = ("source", "baseline", "transfer", "blackbox")
TRAIN_ARGS = ("epochs", "batch_size", "lr", "wd", "milestones", "eps", "steps", "random_start", "label_fix", "limit",
              "seed", "data_dir", "freeze_bn")


def training_record(ck):
    """What the report needs of the training, copied from the checkpoint (the training wrote it): the schedule
    and data actually used, the kept epoch and its validation row, the collapse verdict, the per-epoch rows."""
    args = ck.get("args") or {}
    return {"arch": ck["arch"], "growth": ck.get("growth"), **{k: args.get(k) for k in TRAIN_ARGS},
            "n_train": ck.get("n_train"), "n_val": ck.get("n_val"), "init": ck.get("init"),
            "epoch": ck.get("epoch"), "val": ck.get("metrics"), "collapse": ck.get("collapse"),
            "rows": ck.get("rows") or [], "provenance": ck.get("provenance"), "steps_ran": ck.get("steps_ran"),
            "source": ck.get("source_train")}  # a transfer's: how its source was trained (its departures)


def main(argv=None):
    global WHO
    a = get_args(argv)
    WHO = os.path.basename(a.out)
    if not 0 <= a.eps < math.inf or a.steps < 1 or a.strong_steps < 1 or a.restarts < 1 or a.batch_size < 1 or \
            (a.limit is not None and a.limit < 1):
        raise c.UsageError("--eps must be non-negative; --steps, --strong-steps, --restarts, --batch-size and "
                           "--limit positive")
    if a.curve and not all(0 <= e < math.inf for e in a.curve_eps):
        raise c.UsageError(f"--curve-eps {' '.join(f'{e:g}' for e in a.curve_eps)}: each eps must be non-negative "
                           f"(in /256, e.g. --curve-eps 0 2 4 8 16 32)")
    if a.autoattack:  # a missing package is reported now, not after the whole evaluation
        try:
            import torchattacks  # noqa: F401
        except ImportError:
            raise c.UsageError("--autoattack needs the optional package torchattacks: pip install torchattacks")
    if a.craft_from and a.out.endswith(".json"):  # the examples are tensors: atomic_save would fail to write JSON
        raise c.UsageError(f"--craft-from writes a tensor file: give --out FILE.pt, not {a.out!r}")
    if not a.craft_from and (not a.ckpt or not a.out.endswith(".json")):
        raise c.UsageError("give --ckpt X.pt and --out X.eval.json (or --craft-from DENSENET.pt --out FILE.pt)")
    device = engine.pick_device(a.device)
    cuda = device.startswith("cuda")
    if not cuda and (a.capture == "on" or a.precision == "bf16"):
        flag = "--capture on" if a.capture == "on" else "--precision bf16"
        raise c.UsageError(f"{flag} needs CUDA (this run is on {device}, in fp32); leave it out or use --device cuda")
    a.precision = a.precision or ("bf16" if cuda else "fp32")
    if a.check:
        return
    ck = check_model_file("--craft-from", a.craft_from) if a.craft_from else check_model_file("--ckpt", a.ckpt)
    if os.path.exists(a.out) and not a.force and finished(a):
        say(f"{a.out} exists with the same inputs: nothing to do (--force redoes it)")
        return
    engine.check_writable(a.out)  # before any work: a result that cannot be saved is lost
    torch.manual_seed(a.seed)
    if a.craft_from:
        with engine.capturing(a.capture), c.precision(a.precision):
            return craft_blackbox(a, ck, device)
    role = ck.get("role")
    if role not in ROLES:
        raise c.UsageError(f"{a.ckpt} records no role (source, baseline, transfer or blackbox): it was written by an "
                           f"older version of the training scripts; retrain it")
    dataset = a.dataset or ck.get("dataset") or ("cifar100" if ck["num_classes"] == 100 else "cifar10")
    if c.NUM_CLASSES[dataset] != ck["num_classes"]:
        raise c.UsageError(f"{a.ckpt} has {ck['num_classes']} classes but the {dataset} test set has "
                           f"{c.NUM_CLASSES[dataset]}; evaluate it on "
                           f"{'cifar100' if ck['num_classes'] == 100 else 'cifar10'}")
    if a.blackbox and (dataset != "cifar10" or role == "blackbox"):  # refused, not silently dropped
        raise c.UsageError(f"--blackbox: {a.ckpt} is " + ("the DenseNet121 the examples are crafted on"
                                                          if role == "blackbox" else f"a {dataset} model")
                           + "; the black-box columns are for the other CIFAR-10 models: leave --blackbox out")
    model = c.model_from_checkpoint(ck, device, a.ckpt)
    x, y = load_test(dataset, a)
    bb = None
    if a.blackbox:
        bb = load_blackbox(a.blackbox, y, a, x)
    with engine.output_lock(a.out), engine.capturing(a.capture), c.precision(a.precision):
        evaluate(a, ck, model, x, y, bb, dataset, device)


@functools.lru_cache(maxsize=None)
def sha256(path):
    """The identity of an input file: its contents (a retrained checkpoint differs; a touched or copied one not)."""
    if not path or not os.path.exists(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def columns(a):
    """The columns of common.COLUMNS this command runs: the black-box ones when crafting, else every column its
    flags turn on (a black-box one with --blackbox only)."""
    if a.craft_from:
        return {k: col for k, col in c.COLUMNS.items() if col.box == "bb"}
    return {k: col for k, col in c.COLUMNS.items()
            if (col.box != "bb" or a.blackbox) and (not col.switch or getattr(a, col.switch))}


def inputs(a):
    """Everything an evaluation's (or the crafting's) numbers depend on; the output records it, and a rerun with
    other inputs is refused instead of keeping a stale result. Batch size and device change no number (beyond
    rounding) and are not part of it."""
    rec = {"ckpt": sha256(a.ckpt), "craft_from": sha256(a.craft_from), "blackbox": sha256(a.blackbox),
           "dataset": a.dataset, "data_dir": a.data_dir, "limit": a.limit, "eps": a.eps, "steps": a.steps,
           "precision": a.precision, "columns": list(columns(a))}  # a column added to the table: the rerun says so
    if not a.craft_from:
        rec.update(strong=a.strong, strong_steps=a.strong_steps if a.strong else None,
                   restarts=a.restarts if a.strong else None, seed=a.seed, autoattack=a.autoattack,
                   curve_eps=sorted(a.curve_eps) if a.curve else None)
    return json.loads(json.dumps(rec))  # as read back from the JSON file


FILE_INPUT = {"ckpt": "--ckpt (other weights)", "craft_from": "--craft-from (other weights)",
              "blackbox": "--blackbox (other examples)"}


def finished(a):
    """True if --out holds a result of exactly these inputs; a UsageError naming the difference otherwise."""
    try:
        if a.craft_from:
            old = torch.load(a.out, map_location="cpu", weights_only=False).get("inputs")
        else:
            with open(a.out) as f:
                old = json.load(f).get("inputs")
    except Exception as e:
        raise c.UsageError(f"{a.out} exists but cannot be read ({type(e).__name__}); delete it, or --force to "
                           f"replace it")
    if old is None:
        raise c.UsageError(f"{a.out} exists but records no inputs (an older evaluate.py wrote it); --force redoes "
                           f"it")
    new, g = inputs(a), lambda v: f"{v:g}" if isinstance(v, float) else v  # noqa: E731
    diff = ", ".join(f"{FILE_INPUT[k]} {old.get(k)} -> {v}" if k in FILE_INPUT else
                     f"--{k.replace('_', '-')} {g(old.get(k))} -> {g(v)}" for k, v in new.items() if old.get(k) != v)
    if diff:
        raise c.UsageError(f"{a.out} exists, made from other inputs ({diff}); pass another --out, or --force to "
                           f"redo it")
    return True


def check_model_file(flag, path):
    """The checkpoint at path: a trained model, not a resume state, with finite weights (checked before any work)."""
    ck = c.load_checkpoint(path, flag)
    if "optimizer" in ck:
        raise c.UsageError(f"{flag} {path} is a resume state, not a trained model; pass "
                           f"{path.replace('.last.pt', '.pt')}, the best-validation checkpoint")
    if not all(v.isfinite().all() for v in ck["model"].values() if v.is_floating_point()):
        raise c.UsageError(f"{flag} {path} holds weights that are not finite (its training diverged); retrain it "
                           f"with a lower --lr")
    return ck


def evaluate(a, ck, model, x, y, bb, dataset, device):
    eps, t0, n = a.eps / 256, time.time(), len(y)
    say(f"evaluating {a.ckpt} on {n} {dataset} test images, {c.eps_str(eps)}")
    eps_list = sorted(int(e) if e == int(e) else e for e in a.curve_eps) if a.curve else []
    s, pgd_cost = settings(a), c.COLUMNS["wb_pgd"].cost(settings(a))  # the curve's points cost a WB-PGD each
    cols = columns(a)
    progress = Progress(n, n * (sum(col.cost(s) for col in cols.values() if col.box == "wb")
                                + pgd_cost * sum(e != a.eps for e in eps_list)))
    ok = {k: [] for k in cols if cols[k].box != "worst"}
    # white-box attacks captured on CUDA where they can be (engine.eval_step); one that draws random numbers: eager
    clean = engine.eval_step(model)
    wb = {k: engine.eval_step(model, bind(col.attack, k, eps, s), random_start=col.draws)
          for k, col in cols.items() if col.box == "wb"}
    done, counts = 0, torch.zeros(c.NUM_CLASSES[dataset], dtype=torch.long, device=y.device)
    for i, (xb, yb) in enumerate(c.batches(x, y, a.batch_size)):
        done += len(yb)
        counts += torch.bincount(c.predict(model, xb), minlength=len(counts))  # the constant-class check
        sl = slice(i * a.batch_size, i * a.batch_size + len(yb))
        for k, col in cols.items():
            if col.box == "clean":
                ok[k].append(clean(xb, yb))
            elif col.box == "bb":  # bb_X: the examples x_X crafted once on the DenseNet
                ok[k].append(clean(bb["x_" + k[3:]][sl].to(device), yb))
            elif col.box == "wb":
                ok[k].append(wb[k](xb, yb))
                progress(col.head, done, col.cost(s) * len(yb))
    ok = {k: torch.cat(v) for k, v in ok.items()}
    if "worst" in cols:
        ok["worst"] = torch.stack(list(ok.values())).all(0)
    acc = {k: 100 * v.sum().item() / len(v) for k, v in ok.items()}  # as engine.accuracy: exact ties
    curve = None
    if a.curve:
        curve = {"eps_256": eps_list, "acc": []}
        for e in eps_list:
            if e == a.eps:  # the point at the evaluation's own eps is WB-PGD itself (the same deterministic attack)
                curve["acc"].append(acc["wb_pgd"])
                continue
            right, done, pgd_e = 0, 0, engine.eval_step(model, "pgd", e / 256, e / 256 / 4, a.steps)
            for xb, yb in c.batches(x, y, a.batch_size):
                right += pgd_e(xb, yb).sum().item()
                done += len(yb)
                progress(f"curve, PGD-{a.steps} at eps {e:g}/256", done, a.steps * len(yb))
            curve["acc"].append(100 * right / max(1, n))
    src = None if bb is None or "source_acc_clean" not in bb else \
        {"clean": bb["source_acc_clean"], "fgsm": bb.get("source_acc_fgsm"), "pgd": bb.get("source_acc_pgd"),
         "n": bb["n_test"]}
    flags = sanity_flags(acc, curve, noise_tol(acc["clean"], n), n, c.NUM_CLASSES[dataset], counts.tolist(), src,
                         {k: v.cpu().numpy() for k, v in ok.items()},
                         path_tol(n, a.batch_size, device.startswith("cuda") and a.capture != "off"))
    args = ck.get("args") or {}
    res = {"ckpt": a.ckpt, "role": ck["role"], "dataset": dataset, "arch": ck["arch"], "adv": ck.get("adv"),
           "src": ck.get("src"), "tgt": ck.get("tgt", ck.get("adv") if ck["role"] == "transfer" else None),
           "unfreeze": ck.get("unfreeze"), "seed": args.get("seed"), "n_test": n, "data_dir": a.data_dir,
           "eps": eps, "eps_256": a.eps,
           "eps_paper_scale": 2 * eps,
           "attacks": {"fgsm": {"labels": "true"},
                       "pgd": {"steps": a.steps, "alpha": eps / 4, "random_start": False},
                       **({"strong": {"steps": a.strong_steps, "alpha": 2.5 * eps / a.strong_steps,
                                      "restarts": a.restarts, "random_start": True}} if a.strong else {}),
                       **({"blackbox": {"file": a.blackbox, "source": bb["source"], "steps": bb["steps"],
                                        "source_arch": bb.get("source_arch")}} if bb is not None else {})},
           "acc": acc, "per_image": per_image(ok, counts), "curve": curve, "flags": flags, "train": training_record(ck),
           "eval_seed": a.seed, "inputs": inputs(a), "wall_s": time.time() - t0, **engine.provenance(device)}
    res["steps_ran"] = {**engine.steps_ran(device, engine.why_eager(a.capture, device)), "precision": a.precision}
    engine.atomic_save(res, a.out)
    cols = "  ".join(f"{k} {v:.1f}%" for k, v in acc.items())
    say(f"{cols}  ({time.time() - t0:.0f}s)")
    for f in flags:
        say(f"FLAG {f['check']}: {f['detail']}")
    say(f"wrote {a.out}")


def per_image(ok, counts):
    """Which test images each column got right, so that the report can pair two models on the same images
    (report.compare): one bit per image in test-set order, numpy.packbits (big-endian bit order), base64."""
    return {"n": len(ok["clean"]), "encoding": "base64(numpy.packbits(correct)), test-set order",
            "correct": {k: base64.b64encode(np.packbits(v.cpu().numpy())).decode() for k, v in ok.items()},
            "clean_pred_counts": counts.tolist()}


def load_blackbox(path, y, a, x=None):
    if not os.path.exists(path):
        raise c.UsageError(f"black-box examples {path} do not exist; craft them with evaluate.py --craft-from "
                           f"DENSENET.pt --out {path}")
    try:
        bb = torch.load(path, map_location="cpu", weights_only=False)
        assert isinstance(bb, dict) and "x_pgd" in bb
    except Exception:
        raise c.UsageError(f"{path} is not a black-box examples file; recraft it with evaluate.py --craft-from")
    if bb["dataset"] != "cifar10" or len(bb["y"]) != len(y) or not torch.equal(bb["y"], y.cpu()):
        raise c.UsageError(f"{path} was crafted on another test set ({bb['dataset']}, {len(bb['y'])} images from "
                           f"{bb.get('data_dir')!r}) than this evaluation ({len(y)} images from {a.data_dir!r}); "
                           f"recraft it with the same --data-dir and --limit")
    if abs(bb["eps"] - a.eps / 256) > 1e-12:
        raise c.UsageError(f"{path} was crafted at eps {bb['eps'] * 256:g}/256, not --eps {a.eps:g}; recraft it")
    # the labels can agree while the images differ (another --data-dir): the examples must lie within eps of these
    gap = 0 if x is None else max((bb[k] - x.cpu().float() / 255).abs().max().item() for k in ("x_fgsm", "x_pgd"))
    if gap > bb["eps"] + 1e-5:
        raise c.UsageError(f"{path} holds no perturbations of these {len(y)} test images from {a.data_dir!r} (crafted "
                           f"from {bb.get('data_dir')!r}); recraft it with the same --data-dir and --limit")
    return bb


INTERRUPTED = ("interrupted; nothing was written (an evaluation or a crafting saves only when it ends): run the same "
               "command again to redo it")

if __name__ == "__main__":
    engine.run_main(main, INTERRUPTED)

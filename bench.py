"""Throughput of the project's training and evaluation steps beside a plain PyTorch reference, in one run: the
eager step, the captured step (CUDA graphs), and cohorts of several models per process; then the wall time of
`make all` that the measured rates imply.

    python bench.py --out runs/bench.json          # `make bench`; CUDA: minutes; CPU: 1 step per timing, ~5 min
    python bench.py --device cpu --threads 1       # a CPU shared with other jobs: one thread is far steadier
    python bench.py --quick --device cpu --arch resnet8 --batch-size 8 --growth 4 --out /tmp/bench.json  # smoke

Project: the very callables engine.fit runs: engine.make_step (eager, captured, and a cohort of K models in one
graph, each on its own stream) on common.batches (uint8 data on the device, augmented there), channels_last,
bf16 autocast and fused SGD on CUDA, attacks with input-only gradients; engine.eval_step for evaluation.
Reference: the same math (eps 8/256, PGD-7 with alpha eps/4 and no random start, crafted in eval mode, mixed loss
(CE(clean) + CE(adv)) / 2, FGSM label fix) written the common way: a DataLoader over a CIFAR-like dataset with
per-image CPU transforms, fp32, NCHW, eager, every attack step through loss.backward() (parameter gradients
computed too, model.zero_grad() each step), loss.item() every step. Rates are clean images per second, in total
over a cohort's members (each training image also yields one adversarial image), the median of --repeats
timings after warm-up (which includes the capture), synchronised on CUDA; the data is synthetic. See
BENCHMARKS.md for figures and the commands that produced them.
"""
import argparse
import copy
import itertools
import json
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

import common as c
import engine
import evaluate
import train_blackbox
import train_source
import transfer

# bf16 dense tensor-core peak in TFLOP/s by device name (vendor data sheets; SXM parts)
PEAKS = {"H100 PCIe": 756, "H100": 989, "H200": 989, "A100": 312, "L40S": 362, "4090": 165}
N_TRAIN_ALL, N_TEST, N_MON = 50_000, 10_000, 256  # CIFAR's training and test sets; fit's PGD monitor batch


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--arch", default="resnet56", help="the ResNet timed (resnet8 for smoke tests)")
    p.add_argument("--densenet", action=argparse.BooleanOptionalAction, default=True,
                   help="also time DenseNet121: the black-box stage")
    p.add_argument("--growth", type=int, default=12, help="DenseNet121 growth rate (the authors: 12)")
    p.add_argument("--batch-size", type=int, default=100, help="clean images per step (+ as many adversarial)")
    p.add_argument("--cohorts", type=int, nargs="*", default=None,
                   help="cohort sizes timed beside one model (CUDA: 3 9; CPU: none, members run one after another)")
    p.add_argument("--repeats", type=int, default=None, help="timings per row, median kept (CUDA 5, CPU 3)")
    p.add_argument("--iters", type=int, default=None, help="steps per timing (CUDA 20, CPU 1)")
    p.add_argument("--quick", action="store_true", help="one warm-up and one timing of one step per row")
    p.add_argument("--workers", type=int, default=None,
                   help="reference DataLoader workers (CUDA: 2, as the PyTorch CIFAR tutorial; CPU: 0, the cores "
                        "are the model's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=False,
                   help="CPU: flush denormal floats to zero in both paths (naive code does not; the reference's "
                        "weight gradients then stop hitting slow denormal arithmetic)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for the %% column (default by name)")
    p.add_argument("--out", default="runs/bench.json", help="JSON results")
    p.add_argument("--summary", metavar="DIR", help="print the summary block of `make gpu-check` from DIR and exit")
    a = p.parse_args(argv)
    if a.summary is not None:
        return a
    for flag, v, lo in (("--batch-size", a.batch_size, 1), ("--repeats", a.repeats, 1), ("--iters", a.iters, 1),
                        ("--threads", a.threads, 1), ("--growth", a.growth, 1), ("--workers", a.workers, 0),
                        ("--peak-tflops", a.peak_tflops, 1e-9), *(("--cohorts", k, 2) for k in a.cohorts or ())):
        if v is not None and not v >= lo:  # NaN too
            raise c.UsageError(f"{flag} {v:g}: must be " + ("a positive number of TFLOP/s (or left out: by device name)"
                                                           if flag == "--peak-tflops" else f"at least {lo}"))
    a.device = engine.pick_device(a.device)
    cpu = not a.device.startswith("cuda")
    a.repeats = a.repeats or (1 if a.quick else 3 if cpu else 5)
    a.iters = a.iters or (1 if a.quick or cpu else 20)
    a.workers = a.workers if a.workers is not None else (0 if cpu else 2)
    a.cohorts = a.cohorts if a.cohorts is not None else ([] if cpu else [3, 9])
    return a


# ----------------------------------------------------------------------------------------------------------
# The plain reference

class CifarLike(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: a uint8 HWC array -> PIL image -> transforms."""

    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def ref_loader(x, y, batch_size, train, workers, device):
    tf = T.Compose(([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []) + [T.ToTensor()])
    ds = CifarLike(x.permute(0, 2, 3, 1).cpu().numpy(), y.cpu().numpy(), tf)
    return torch.utils.data.DataLoader(ds, batch_size, shuffle=train, drop_last=train, num_workers=workers,
                                       pin_memory=device.startswith("cuda"), persistent_workers=workers > 0)


def ref_attack(model, x, y, kind, eps, steps=7):
    """FGSM / PGD as commonly written: backward() on the loss, which fills every parameter's .grad too.
    Eval mode while crafting, as the protocol (train-mode crafting would be other math: batch statistics)."""
    model.eval()
    xa = x.clone()
    for _ in range(1 if kind == "fgsm" else steps):
        xa.requires_grad_(True)
        model.zero_grad()
        F.cross_entropy(model(xa), y).backward()
        xa = xa.detach() + (eps if kind == "fgsm" else eps / 4) * xa.grad.sign()
        xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0, 1)
    model.train()
    return xa.detach()


def ref_step(model, opt, x, y, adv, eps, steps=7):
    """The mixed clean + adversarial step of the paper (Sec. 2.3), the way most code writes it."""
    if adv == "nat":
        loss = F.cross_entropy(model(x), y)
    else:
        y_craft = y
        if adv == "fgsm":  # label-leaking fix: craft with the model's own predictions
            model.eval()
            with torch.no_grad():
                y_craft = model(x).argmax(1)
            model.train()
        x_adv = ref_attack(model, x, y_craft, adv, eps, steps)
        loss = (F.cross_entropy(model(x), y) + F.cross_entropy(model(x_adv), y)) / 2
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def ref_accuracy(model, loader, kind, eps, device):
    correct = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        if kind:
            x = ref_attack(model, x, y, kind, eps)
        model.eval()
        with torch.no_grad():
            correct += (model(x).argmax(1) == y).sum().item()
    return 100 * correct / len(loader.dataset)


# ----------------------------------------------------------------------------------------------------------
# Timing

# FLOPs per clean image, in forward passes F: a backward pass costs ~2F, one for input gradients only ~F
FWD = {"train/nat": 3, "train/fgsm": 1 + 2 + 6, "train/pgd": 7 * 2 + 6, "eval/clean": 1, "eval/fgsm": 3, "eval/pgd": 15}


def fwd_macs(model):
    """Multiply-adds of one forward pass per 32x32 image (conv and linear layers, counted by forward hooks), in
    all and in the layers transfer unfreeze 12 trains (layer3 + head)."""
    macs = {}
    hook = lambda m, i, o: macs.__setitem__(m, o[0].numel() * (m.weight[0].numel() if o.dim() == 4 else m.in_features))
    hs = [m.register_forward_hook(hook) for m in c.weight_layers(model)]
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, 32, 32))
    for h in hs:
        h.remove()
    top = [m for part in ("layer3", "linear") if hasattr(model, part) for m in getattr(model, part).modules()]
    return sum(macs.values()), sum(macs.get(m, 0) for m in top)


def host_syncs(f, cuda):
    """Run f; on CUDA return how many host-device synchronisations it made (torch's sync debug mode)."""
    if not cuda:
        f()
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            f()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def bench_arch(a, arch, advs, x, y, flops, peak):
    """Rows '{arch}/train/{adv}' and '{arch}/eval/{kind}': img/s of each path ('reference', 'eager', on CUDA
    'captured' and 'cohortK'), the host syncs of the project's step, and its TFLOP/s."""
    dev, cuda, eps, bs = a.device, a.device.startswith("cuda"), c.EPS, a.batch_size
    torch.manual_seed(0)
    base = c.build_model(arch, 10, a.growth)
    ref = copy.deepcopy(base).to(dev)  # same initial weights; fp32, NCHW, eager
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5)
    theirs = itertools.chain.from_iterable(itertools.repeat(ref_loader(x, y, bs, True, a.workers, dev)))
    eval_bs = 500 if cuda else bs  # engine.accuracy's batch on CUDA; one training batch on CPU
    xe, ye = x[:eval_bs * a.iters], y[:eval_bs * a.iters]
    eval_loader = ref_loader(xe, ye, eval_bs, False, a.workers, dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def ours(adv, k, capture):
        """fit's inner loop over k members (each a copy of the same model, as fit builds them)."""
        models = [copy.deepcopy(base).to(dev).to(memory_format=torch.channels_last) for _ in range(k)]
        opts = [torch.optim.SGD(m.parameters(), lr=torch.tensor(0.1, device=dev) if cuda else 0.1, momentum=0.9,
                                weight_decay=1e-5, fused=cuda or None) for m in models]
        step = engine.make_step(models, opts, adv, eps, capture=capture)
        gens = [torch.Generator(dev).manual_seed(i) for i in range(k)]
        its = [itertools.chain.from_iterable(c.batches(x, y, bs, g, train=True) for _ in itertools.count())
               for g in gens]
        tot = [torch.zeros(3, device=dev) for _ in models]

        def run():
            for m in models:
                c.set_train_mode(m)
            for _ in range(a.iters):
                b = [next(it) for it in its]
                for t, (loss, n, na), (_, yb) in zip(tot, step(b, gens), b):
                    t += torch.stack([loss * len(yb), n.float(), na.float()])
        return run

    def train_ref(adv):
        def run():
            ref.train()
            for _ in range(a.iters):
                xb, yb = next(theirs)
                ref_step(ref, ref_opt, xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True), adv, eps)
        return run

    def evaluation(kind, capture):
        model = copy.deepcopy(base).to(dev).to(memory_format=torch.channels_last)
        f = engine.eval_step(model, kind, eps, capture=capture)

        def run():
            n = torch.zeros((), device=dev, dtype=torch.long)
            for xb, yb in c.batches(xe, ye, eval_bs):
                n += f(xb, yb).sum()
            return n.item()  # as engine.accuracy: one sync per call
        return run

    jobs = {}
    for adv in advs:
        v = {"reference": (bs, lambda adv=adv: train_ref(adv)), "eager": (bs, lambda adv=adv: ours(adv, 1, "off"))}
        if cuda:
            v["captured"] = (bs, lambda adv=adv: ours(adv, 1, "auto"))
        v.update({f"cohort{k}": (k * bs, lambda adv=adv, k=k: ours(adv, k, "auto")) for k in a.cohorts})
        jobs[f"train/{adv}"] = v
    for kind in ("clean", "fgsm", "pgd"):
        k = None if kind == "clean" else kind
        v = {"reference": (len(xe) / a.iters, lambda k=k: lambda: ref_accuracy(ref, eval_loader, k, eps, dev)),
             "eager": (len(xe) / a.iters, lambda k=k: evaluation(k, "off"))}
        if cuda:
            v["captured"] = (len(xe) / a.iters, lambda k=k: evaluation(k, "auto"))
        jobs[f"eval/{kind}"] = v
    rows = {}
    for what, variants in jobs.items():
        runs = {name: make() for name, (_, make) in variants.items()}  # built once: a cohort's graph is reused
        for f in runs.values():  # warm-up: cuDNN's choices, the capture (which synchronises: not counted)
            f()
        syncs = host_syncs(runs.get("captured", runs["eager"]), cuda)  # one steady-state call of the project's
        ts = {name: [] for name in runs}
        for _ in range(a.repeats):  # interleaved, so a busy machine slows every path alike
            for name, f in runs.items():
                sync()
                t0 = time.perf_counter()
                f()
                sync()
                ts[name].append(time.perf_counter() - t0)
        rate = {name: variants[name][0] * a.iters / statistics.median(t) for name, t in ts.items()}
        best = max((n for n in rate if n != "reference"), key=rate.get)
        tflops = rate[best] * flops[arch] * FWD[what] / 1e12
        rows[f"{arch}/{what}"] = {"img_s": rate, "seconds": ts, "best": best, "speedup": rate[best] / rate["reference"],
                                  "tflops": tflops, "peak_frac": tflops / peak if peak else None, "host_syncs": syncs}
        print(f"{arch + '/' + what:24s}" + "".join(f" {rate[n]:10.1f}" if n in rate else f" {'-':>10s}"
                                                  for n in columns(a))
              + f" {rate[best] / rate['reference']:7.2f}x {tflops:8.3f} "
              + (f"{100 * tflops / peak:6.2f}%" if peak else "      -") + ("" if syncs is None else f" {syncs:5d}"),
              flush=True)
        del runs
        if cuda:
            torch.cuda.empty_cache()
    return rows


def columns(a):
    cuda = a.device.startswith("cuda")
    return ["reference", "eager"] + (["captured"] if cuda else []) + [f"cohort{k}" for k in a.cohorts]


# The paper's grid as the Makefile builds it by default (common's PAPER_* lists); the estimate counts from here.
GRID = {"sources": c.PAPER_ADV, "baselines": c.PAPER_ADV,
        "transfer cohorts": [(s, t) for s in c.PAPER_ADV for t in c.PAPER_ADV], "unfreeze": c.PAPER_UNF}


def estimate(rows, arch, seeds=1, grid=GRID):
    """Hours of `make all` on one device from the measured rates, the Makefile's DAG counted from GRID (or
    another grid of the same keys: depth_estimate's) and the scripts' defaults. Each job is one process: sources
    and baselines cohorts of `seeds` models, transfers cohorts of 3 strategies x `seeds` (their members all counted
    at unfreeze-56 cost: an upper bound). Processes
    sharing one GPU time-slice it (no gain measured), so one GPU's time is the sum of the jobs'. The DAG's critical
    path (sources, then transfers, then evaluations, each stage's jobs all at once) is what enough GPUs would take.
    """
    def per_image(net, what, k):  # seconds per member-image in a cohort of k (the nearest size measured)
        r = rows[f"{net}/{what}"]["img_s"]
        sizes = {1: r.get("captured", r["eager"]), **{int(n[6:]): v for n, v in r.items() if n.startswith("cohort")}}
        return 1 / sizes[min(sizes, key=lambda s: (abs(s - k), -s))]

    ep_src = train_source.get_args([]).epochs
    ep_tl = transfer.get_args(["--src", "nat", "--tgt", "nat", "--unfreeze", "1"]).epochs
    ev = evaluate.get_args(["--out", "x.eval.json"])
    n_val = round(0.05 * N_TRAIN_ALL)  # common.load_data's split
    n_train = N_TRAIN_ALL - n_val

    def training(net, adv, epochs, k):  # one job: k members trained together for `epochs`
        val = per_image(net, "eval/clean", 1) + (per_image(net, f"eval/{adv}", 1) if adv != "nat" else 0)
        mon = N_MON * per_image(net, "eval/pgd", 1) if adv != "nat" else 0
        return epochs * k * (n_train * per_image(net, f"train/{adv}", k) + n_val * val + mon)

    stages = {"sources + baselines": [training(arch, adv, ep_src, seeds) for adv in grid["sources"]]
              + [training(arch, adv, ep_src, seeds) for adv in grid["baselines"]],
              "transfers": [training(arch, t, ep_tl, len(grid["unfreeze"]) * seeds)
                            for _, t in grid["transfer cohorts"]]}
    e = lambda what: per_image(arch, f"eval/{what}", 1)  # noqa: E731
    n_evals = seeds * (len(grid["sources"]) + len(grid["baselines"])
                       + len(grid["transfer cohorts"]) * len(grid["unfreeze"]))
    n_bb = n_evals - seeds * len(grid["sources"])  # CIFAR-10 models classify the black-box sets
    # every column evaluate.py runs by default (common.COLUMNS), at its cost in forward passes, the measured PGD-7
    # rate per pass (FWD); the strong attack on every image, a bound
    s, per_pass = evaluate.settings(ev), e("pgd") / FWD["eval/pgd"]
    cols = [col for col in c.COLUMNS.values() if not col.switch or getattr(ev, col.switch)]
    one_eval = N_TEST * (e("clean") + per_pass * sum(col.cost(s) for col in cols if col.box == "wb")
                         + (len(ev.curve_eps) - 1) * e("pgd"))
    n_bbcols = sum(col.box == "bb" for col in cols)
    stages["evaluations"] = [one_eval] * n_evals + [n_bbcols * N_TEST * e("clean")] * n_bb
    if "densenet121/train/nat" in rows and grid.get("blackbox", True):  # beside the sources; crafts the BB sets
        ep_bb = train_blackbox.get_args([]).epochs
        d = lambda what: per_image("densenet121", f"eval/{what}", 1)  # noqa: E731
        stages["sources + baselines"].append(training("densenet121", "nat", ep_bb, 1))
        stages["evaluations"].append(N_TEST * (2 * d("pgd") / FWD["eval/pgd"] * sum(col.cost(s) for col in cols
                                                                                   if col.box == "bb") + d("clean")))
    return {"stages_h": {k: sum(v) / 3600 for k, v in stages.items()}, "total_h": sum(map(sum, stages.values())) / 3600,
            "critical_path_h": sum(max(v, default=0) for v in stages.values()) / 3600,
            "jobs": {k: len(v) for k, v in stages.items()}}


def depth_estimate(rows, arch, seeds=1, depths=c.DEPTH_SWEEP):
    """Hours of `make depth SRC=s TGT=t` on one device, per target training: one cohort of every depth x seed (each
    member counted at unfreeze-56 cost: an upper bound, a frozen layer needs no weight gradients) and their
    evaluations; its source, the baselines and the DenseNet are `make all`'s (its first stage), and a depth the grid
    already trained (1, 12, 56) is reused, not retrained."""
    return {t: estimate(rows, arch, seeds, {"sources": (), "baselines": (), "transfer cohorts": [("src", t)],
                                            "unfreeze": depths, "blackbox": False})["total_h"] for t in c.PAPER_ADV}


def print_estimates(a, name, est, dep):
    """The hours of `make all` and `make depth` the rates imply; none after --quick (one timing of one step per row:
    two identical runs gave 152 h and 2,827 h), and a warning for another ResNet than the paper's."""
    if a.quick:
        print("\n--quick is a smoke test of the benchmark, not a measurement (one timing of one step per row): no "
              "`make all` estimate is printed; drop --quick for one")
        return
    make = "make" + ("" if a.arch == "resnet56" else f" ARCH={a.arch}")
    print(f"\n`{make} all` on one {name}, from these rates (the Makefile's jobs: sources and baselines one model "
          f"each, transfers cohorts of 3, members counted at full cost):")
    if a.arch != "resnet56":
        print(f"  WARNING: {a.arch} rates: the hours of `{make} all`, not of the paper's `make all` (ResNet56); "
              f"bench.py --arch resnet56 estimates that")
    for k, h in est["stages_h"].items():
        print(f"  {k:24s} {est['jobs'][k]:3d} jobs {h:10.2f} h")
    print(f"  {'total, one device':33s} {est['total_h']:10.2f} h  (jobs sharing a GPU time-slice it: the sum)")
    print(f"  {'critical path of the DAG':33s} {est['critical_path_h']:10.2f} h  (a GPU per job)")
    print(f"`{make} depth SRC=... TGT=...` ({len(c.DEPTH_SWEEP)} depths: {' '.join(map(str, c.DEPTH_SWEEP))}; one "
          f"cohort, members at full cost) per target training, beyond `{make} all`'s sources, baselines and DenseNet:")
    print("  " + ", ".join(f"TGT={t}: {h:.2f} h" for t, h in dep.items()))


def pct(v):
    return "-" if v is None else f"{100 * v:.2f}%"


def self_check(a, arch, x, y, est):
    """What the self-check's tolerances must clear, and what the check costs (CUDA). Two eager runs of one PGD-7
    training step and of one PGD-7 evaluation batch, from the same state on the same batch: how far bf16 eager
    lies from itself (the noise the tolerances sit above). The captured graphs' first-replay differences and times:
    the checks this process made (engine._CAPTURED.checks). The cost of checking every graph of `make all`: per
    training job one training graph and up to 3 validation graphs (clean, attack, PGD monitor), per evaluation up
    to 9 (clean, FGSM, PGD-7 and 6 more curve points), each at the slowest check measured of its kind."""
    torch.manual_seed(0)
    model = c.build_model(arch, 10).to(a.device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.1, device=a.device), momentum=0.9, weight_decay=1e-5,
                          fused=True)
    c.set_train_mode(model)
    xb, yb = x[:a.batch_size].float() / 255, y[:a.batch_size]
    runs = []
    for _ in range(2):
        m, o = copy.deepcopy((model, opt))
        base = {k: [t.clone() for t in v] for k, v in engine._member_state(m, o).items()}
        runs.append((c.train_step(m, o, xb, yb, "pgd", c.EPS), engine._member_state(m, o), base))
    (o1, s1, _), (o2, s2, base) = runs
    train_noise = engine.step_difference([o1], [o2], [s1], [s2], [base], len(yb))[0]
    f = engine.eval_step(model, "pgd", c.EPS, capture="off")
    xe, ye = x[:500].float() / 255, y[:500]
    eval_noise = (f(xe, ye) != f(xe, ye)).float().mean().item()
    train = [k for k in engine._CAPTURED.checks if k["what"].startswith("training")]
    evals = [k for k in engine._CAPTURED.checks if k not in train]
    worst = lambda ks, f: max((k[f] for k in ks), default=None)  # noqa: E731
    t_train, t_eval = worst(train, "seconds") or 0.0, worst(evals, "seconds") or 0.0
    jobs = est["jobs"]["sources + baselines"] + est["jobs"]["transfers"]
    g = GRID
    n_evals = len(g["sources"]) + len(g["baselines"]) + len(g["transfer cohorts"]) * len(g["unfreeze"])
    n_eval_graphs = 3 * jobs + 9 * n_evals + 3 + 1  # and the DenseNet's evaluation, the crafting's accuracy
    cost = jobs * t_train + n_eval_graphs * t_eval
    res = {"tolerance_train": engine.CHECK_RTOL, "tolerance_eval": engine.CHECK_FRAC,
           "train_eager_vs_eager": train_noise, "eval_eager_vs_eager": eval_noise,
           "train_captured_vs_eager": worst(train, "difference"), "eval_captured_vs_eager": worst(evals, "difference"),
           "checks": len(train) + len(evals), "train_check_s": t_train, "eval_check_s": t_eval,
           "make_all_graphs": jobs + n_eval_graphs, "make_all_s": cost, "make_all_frac": cost / (3600 * est["total_h"])}
    print(f"\nself-check (each graph's first replay against eager; tolerances {pct(engine.CHECK_RTOL)} of a training "
          f"step's change, {pct(engine.CHECK_FRAC)} of an evaluation batch):\n"
          f"  training step   captured vs eager {pct(res['train_captured_vs_eager'])} (worst), eager vs eager "
          f"{pct(train_noise)}; {t_train:.2f} s per graph\n"
          f"  evaluation      captured vs eager {pct(res['eval_captured_vs_eager'])} of images (worst), eager vs eager "
          f"{pct(eval_noise)}; {t_eval:.2f} s per graph\n"
          f"  make all        {res['make_all_graphs']} graphs: {cost / 60:.1f} min = {pct(res['make_all_frac'])} of "
          f"the estimate" + (f"\n  FALLBACK        {engine._CAPTURED.fallback}" if engine._CAPTURED.fallback else ""),
          flush=True)
    return res


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def main(argv=None):
    a = get_args(argv)
    if a.summary is not None:
        sys.exit(summary(a.summary))
    t0 = time.time()
    engine.check_writable(a.out)
    dev, cuda = a.device, a.device.startswith("cuda")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    torch.set_flush_denormal(a.flush_denormal)
    name = torch.cuda.get_device_name(dev) if cuda else cpu_name()
    peak = a.peak_tflops or next((v for k, v in PEAKS.items() if cuda and k in name), None)
    prov = {**engine.provenance(dev), "device_name": name, "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    print(f"bench on {name} ({dev}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{a.repeats} timings x {a.iters} steps per row, batch {a.batch_size} clean + {a.batch_size} adversarial "
          f"per model, {c.eps_str(c.EPS)}")
    archs = {a.arch: c.PAPER_ADV, **({"densenet121": ("nat",)} if a.densenet else {})}
    flops = {}
    for arch in archs:
        flops[arch] = 2 * fwd_macs(c.build_model(arch, 10, a.growth))[0]
        print(f"{arch}: {flops[arch] / 2e6:.1f} M multiply-adds = {flops[arch] / 1e6:.1f} MFLOP per forward pass")
    n = max(10 * a.batch_size, (500 if cuda else a.batch_size) * a.iters)  # the evaluation set is its head
    x, y = (t.to(dev) for t in c.synthetic("cifar10", True, n))  # CIFAR-10-like uint8 data on the device
    print("\nimg/s (clean images, all members of a cohort together); speedup: the best project path over the "
          "reference; TFLOP/s and % peak of that path" + ("; syncs: host syncs in one step call" if cuda else ""))
    print(f"{'row':24s}" + "".join(f" {n:>10s}" for n in columns(a))
          + f" {'speedup':>8s} {'TFLOP/s':>8s} {'% peak':>7s}" + (" syncs" if cuda else ""), flush=True)
    rows = {}
    for arch, advs in archs.items():
        rows.update(bench_arch(a, arch, advs, x, y, flops, peak))
    est, dep = estimate(rows, a.arch), depth_estimate(rows, a.arch)
    print_estimates(a, name, est, dep)
    check = self_check(a, a.arch, x, y, est) if cuda else None
    prov["loadavg_after"] = os.getloadavg()
    result = {"args": vars(a), "provenance": prov, "peak_tflops": peak, "flops_fwd_per_image": flops, "rows": rows,
              "make_all": est, "make_depth_h": dep, "self_check": check, "fallback": engine._CAPTURED.fallback,
              "wall_s": time.time() - t0}
    engine.atomic_save(result, a.out)
    print(f"wrote {a.out}")
    return result


def summary(folder):
    """`make gpu-check`'s summary block from what its parts wrote in folder; exit status 1 if a test failed, a part
    is missing or a capture fell back; one line (UsageError) when folder holds none of them."""
    parts = ("start", "tests.log", "bench.json", "resnet56.json", "densenet121.json", "resnet56-bf16.eval.json",
             "resnet56-fp32.eval.json", "densenet121.eval.json")
    if not os.path.isdir(folder):
        raise c.UsageError(f"--summary {folder}: {'not a folder' if os.path.exists(folder) else 'no such folder'}; "
                           f"pass the folder `make gpu-check` wrote (CHECK_RUN, default runs/gpu-check)")
    if not any(os.path.exists(os.path.join(folder, n)) for n in parts):
        raise c.UsageError(f"--summary {folder}: none of `make gpu-check`'s outputs are there; run `make gpu-check` "
                           f"on a CUDA machine first")

    def read(name):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            problems.append(f"{name} missing (its part failed: see above)")
            return {} if name.endswith(".json") else ""
        try:
            with open(path) as f:
                return json.load(f) if name.endswith(".json") else f.read()
        except (OSError, ValueError) as e:
            problems.append(f"{name} unreadable ({type(e).__name__})")
            return {} if name.endswith(".json") else ""
    problems = []
    start = read("start")
    tests = (read("tests.log").strip().splitlines() or ["no test output"])[-1].strip("= ")
    if "failed" in tests or "error" in tests or "passed" not in tests:
        problems.append(f"tests: {tests}")
    bench = read("bench.json")
    runs = {n: read(n + ".json") for n in ("resnet56", "densenet121")}
    evals = {n: read(n + ".eval.json") for n in ("resnet56-bf16", "resnet56-fp32", "densenet121")}
    ran = [r for x in runs.values() for r in x.get("steps_ran", [])] + [e["steps_ran"] for e in evals.values() if e]
    falls = sorted({r["why"] for r in ran if r["steps"] != "captured"} | ({bench.get("fallback")} - {None}))
    problems += [f"not captured: {w}" for w in falls] + ["no run recorded its steps"] * (not ran)
    gib = lambda r: f"{r['peak_memory_gib']:.1f} GiB" if r and r.get("peak_memory_gib") is not None else "-"  # noqa
    prov = bench.get("provenance", {})
    problems += ["no GPU: the benchmark ran on the CPU"] * (prov.get("device") == "cpu")
    lines = [f"==== make gpu-check: {prov.get('device_name', '?')}, torch {prov.get('torch', '?')}, CUDA "
             f"{prov.get('cuda', '?')}" + (f", {engine._fmt_time(time.time() - int(start))} in all (budget 5 min)"
                                          if start else "") + " ====",
             f"tests          {tests}"]
    rows = bench.get("rows", {})
    for what, name in (("train/pgd", "PGD-7 training"), ("train/nat", "natural training"), ("eval/pgd", "PGD-7 eval")):
        r = rows.get(f"resnet56/{what}", {}).get("img_s")
        if r:
            lines.append(f"{'img/s' if what == 'train/pgd' else '':14s} ResNet56 {name}: " + ", ".join(
                f"{k} {v:,.0f}" for k, v in r.items()) + (f" (captured {r['captured'] / r['eager']:.1f}x eager)"
                                                          if "captured" in r else ""))
    lines.append("steps          " + ("EAGER: " + "; ".join(falls) if falls else
                                      f"captured in every run (training, cohorts, evaluation: {len(ran)} records)"
                                      if ran else "none recorded: no training or evaluation of the check finished"))
    est = bench.get("make_all")
    if est:
        lines.append(f"make all       {est['total_h']:.1f} h on this GPU, critical path {est['critical_path_h']:.1f} h"
                     + ("" if "densenet121/train/nat" in rows else " (without the DenseNet121: `make bench` times it)"))
    ev = {n: gib(e.get("steps_ran")) for n, e in evals.items()}
    tr = {n: gib((x.get("steps_ran") or [None])[-1]) for n, x in runs.items()}
    lines.append(f"peak memory    evaluation ResNet56 {ev['resnet56-bf16']} (fp32 {ev['resnet56-fp32']}), DenseNet121 "
                 f"{ev['densenet121']}; training ResNet56 PGD {tr['resnet56']}, DenseNet121 {tr['densenet121']} "
                 f"(reserved, per process)")
    sc = bench.get("self_check")
    if sc:
        lines.append(f"self-check     training captured vs eager {pct(sc['train_captured_vs_eager'])}, eager vs eager "
                     f"{pct(sc['train_eager_vs_eager'])} (tolerance {pct(sc['tolerance_train'])}); evaluation "
                     f"{pct(sc['eval_captured_vs_eager'])} / {pct(sc['eval_eager_vs_eager'])} of images (tolerance "
                     f"{pct(sc['tolerance_eval'])}); cost {pct(sc['make_all_frac'])} of make all")
    b16, f32 = evals["resnet56-bf16"].get("acc"), evals["resnet56-fp32"].get("acc")
    if b16 and f32:
        n, beyond = evals["resnet56-bf16"]["n_test"], []
        for k, name in (("wb_pgd", "WB-PGD"), ("wb_strong", "WB-strong")):
            if k in b16 and k in f32:
                d, se2 = b16[k] - f32[k], 2 * c.binomial_se(f32[k], n)
                beyond += [name] * (abs(d) > se2)
                lines.append(f"{'precision' if k == 'wb_pgd' else '':14s} {name}: bf16 {b16[k]:.1f}%, fp32 "
                             f"{f32[k]:.1f}%, difference {d:+.1f} points, two binomial SE {se2:.1f} ({n} images)")
        lines.append(" " * 15 + ("bf16 attacks differ from fp32 beyond noise on " + " and ".join(beyond) +
                                 ": evaluate with --precision fp32 (EVAL_FLAGS) and make it the default" if beyond else
                                 "bf16 and fp32 attacks agree within noise: bf16 stays the default"))
    times = [("bench", bench.get("wall_s"))] + [(f"training {n}", x.get("wall_s")) for n, x in runs.items()] + \
        [(f"evaluation {n}", e.get("wall_s")) for n, e in evals.items()]
    lines.append("time           " + ", ".join(f"{n} {t:.0f} s" for n, t in times if t is not None))
    lines.append("verdict        " + ("OK" if not problems else "PROBLEMS: " + "; ".join(problems)))
    print("\n".join(lines))
    return 1 if problems else 0


if __name__ == "__main__":
    engine.run_main(main, "interrupted: the benchmark stopped before the end and wrote nothing (its --out is written "
                     "once every row is timed); run it again to time them all")

"""Throughput of the project's training and evaluation steps beside a plain PyTorch reference, in one run, and the
wall time of `make all` that the measured rates imply.

    python bench.py --out runs/bench.json          # `make bench`; CUDA: minutes; CPU: 1 step per timing, ~5 min
    python bench.py --device cpu --threads 1       # a CPU shared with other jobs: one thread is far steadier
    python bench.py --quick --device cpu --arch resnet8 --batch-size 8 --growth 4 --out /tmp/bench.json  # smoke

Project: common.train_step on common.batches (uint8 data on the device, augmented there), channels_last,
bf16 autocast and fused SGD on CUDA, attacks with input-only gradients, as common.fit runs them. Reference: the
same math (eps 8/256, PGD-7 with alpha eps/4 and no random start, crafted in eval mode, mixed loss (CE(clean) +
CE(adv)) / 2, FGSM label fix) written the common way: a DataLoader over a CIFAR-like dataset with per-image CPU
transforms, fp32, NCHW, eager, every attack step through loss.backward() (parameter gradients computed too,
model.zero_grad() each step), loss.item() every step. Rates are clean images per second (each training image
also yields one adversarial image), the median of --repeats timings after warm-up, synchronised on CUDA; the
data is synthetic. See BENCHMARKS.md for figures and the commands that produced them.
"""
import argparse
import copy
import itertools
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

import common as c

# bf16 dense tensor-core peak in TFLOP/s by device name (vendor data sheets; SXM parts)
PEAKS = {"H100 PCIe": 756, "H100": 989, "H200": 989, "A100": 312, "L40S": 362, "4090": 165}
# `make all` (PROTOCOL.md, Makefile): training, validation, PGD-monitor and test images; ResNets evaluated (3 sources
# on CIFAR-100, 3 baselines and 27 transfers on CIFAR-10), those also given the black-box sets
N_TRAIN, N_VAL, N_MON, N_TEST, N_EVALS, N_BB_EVALS = 47_500, 2_500, 256, 10_000, 33, 30


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--arch", default="resnet56", help="the ResNet timed (resnet8 for smoke tests)")
    p.add_argument("--densenet", action=argparse.BooleanOptionalAction, default=True,
                   help="also time DenseNet121: the black-box stage")
    p.add_argument("--growth", type=int, default=12, help="DenseNet121 growth rate (the authors: 12)")
    p.add_argument("--batch-size", type=int, default=100, help="clean images per step (+ as many adversarial)")
    p.add_argument("--repeats", type=int, default=None, help="timings per row, median kept (CUDA 5, CPU 3)")
    p.add_argument("--iters", type=int, default=None, help="steps per timing (CUDA 20, CPU 1)")
    p.add_argument("--quick", action="store_true", help="one warm-up and one timing of one step per row")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the project's model (meant for CUDA; the reference stays eager)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="the project's model in channels_last, as fit (--no-channels-last: the layout before)")
    p.add_argument("--workers", type=int, default=None,
                   help="reference DataLoader workers (CUDA: 2, as the PyTorch CIFAR tutorial; CPU: 0, the cores "
                        "are the model's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=False,
                   help="CPU: flush denormal floats to zero in both paths (naive code does not; the reference's "
                        "weight gradients then stop hitting slow denormal arithmetic)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for the %% column (default by name)")
    p.add_argument("--out", default="runs/bench.json", help="JSON results")
    a = p.parse_args(argv)
    a.device = c.pick_device(a.device)
    cpu = not a.device.startswith("cuda")
    a.repeats = a.repeats or (1 if a.quick else 3 if cpu else 5)
    a.iters = a.iters or (1 if a.quick or cpu else 20)
    a.workers = a.workers if a.workers is not None else (0 if cpu else 2)
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
    """Rows '{arch}/train/{adv}' and '{arch}/eval/{kind}': the project's and the reference's rates."""
    dev, cuda, eps, bs = a.device, a.device.startswith("cuda"), c.EPS, a.batch_size
    torch.manual_seed(0)
    model = c.build_model(arch, 10, a.growth).to(dev)
    ref = copy.deepcopy(model)  # same initial weights; fp32, NCHW, eager
    if a.channels_last:  # as common.fit does
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if a.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5, fused=cuda or None)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5)
    gen = torch.Generator(dev).manual_seed(0)
    ours = itertools.chain.from_iterable(c.batches(x, y, bs, gen, train=True) for _ in itertools.count())
    theirs = itertools.chain.from_iterable(itertools.repeat(ref_loader(x, y, bs, True, a.workers, dev)))
    eval_bs = 500 if cuda else bs  # common.accuracy's batch on CUDA; one training batch on CPU
    xe, ye = x[:eval_bs * a.iters], y[:eval_bs * a.iters]
    eval_loader = ref_loader(xe, ye, eval_bs, False, a.workers, dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def train_ours(adv):
        c.set_train_mode(net)
        tot = torch.zeros(3, device=dev)
        for _ in range(a.iters):  # the body of fit's step loop
            xb, yb = next(ours)
            loss, k, ka = c.train_step(net, opt, xb, yb, adv, eps)
            tot += torch.stack([loss * len(yb), k.float(), ka.float()])

    def train_ref(adv):
        ref.train()
        for _ in range(a.iters):
            xb, yb = next(theirs)
            ref_step(ref, ref_opt, xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True), adv, eps)

    jobs = {f"train/{adv}": (bs * a.iters, lambda adv=adv: train_ours(adv), lambda adv=adv: train_ref(adv))
            for adv in advs}
    for kind in ("clean", "fgsm", "pgd"):
        k = None if kind == "clean" else kind
        jobs[f"eval/{kind}"] = (len(xe), lambda k=k: c.accuracy(net, xe, ye, batch_size=eval_bs, kind=k, eps=eps),
                                lambda k=k: ref_accuracy(ref, eval_loader, k, eps, dev))
    rows = {}
    for what, (n, fo, fr) in jobs.items():
        syncs = host_syncs(fo, cuda)  # warm-up (and compilation)
        fr()
        to, tr = [], []
        for _ in range(a.repeats):  # interleaved, so a busy machine slows both alike
            for f, ts in ((fo, to), (fr, tr)):
                sync()
                t0 = time.perf_counter()
                f()
                sync()
                ts.append(time.perf_counter() - t0)
        po, pr = n / statistics.median(to), n / statistics.median(tr)
        tflops = po * flops[arch] * FWD[what] / 1e12
        r = rows[f"{arch}/{what}"] = {
            "project_img_s": po, "reference_img_s": pr, "speedup": po / pr, "project_tflops": tflops,
            "peak_frac": tflops / peak if peak else None, "images": n, "project_s": to, "reference_s": tr,
            "project_host_syncs": syncs}
        print(f"{arch + '/' + what:24s} {po:14.1f} {pr:16.1f} {po / pr:7.2f}x {tflops:8.3f} "
              + (f"{100 * r['peak_frac']:6.2f}%" if peak else "      -")
              + ("" if syncs is None else f" {syncs:6d}"), flush=True)
    return rows


def estimate(rows, arch, flops, frac12, full_cost):
    """Hours and FLOPs of `make all` run one job at a time on this device, from the project's measured rates.

    Transfers with unfreeze 1 / 12 back-propagate the training loss through the head / layer3 + head only
    (fraction frac12 of the forward multiply-adds); their crafting still needs the full input gradient. With
    full_cost they are counted as unfreeze 56 (an upper bound)."""
    s = {k: 1 / v["project_img_s"] for k, v in rows.items()}
    out = {}

    def add(stage, n, seconds, fwd, net=arch):  # n images at `seconds` and `fwd` forward passes each
        t, f = out.get(stage, (0.0, 0.0))
        out[stage] = (t + n * seconds, f + n * fwd * flops[net])

    def train(stage, net, adv, runs, k=1.0):  # runs = models x epochs; k = cost of the training passes
        halves = 1 if adv == "nat" else 2  # the clean and the adversarial half are trained
        t_craft = s[f"{net}/train/{adv}"] - halves * s[f"{net}/train/nat"]
        add(stage, runs * N_TRAIN, max(t_craft, 0) + halves * s[f"{net}/train/nat"] * k,
            FWD[f"train/{adv}"] - 3 * halves * (1 - k), net)
        val = {"clean": N_VAL} if adv == "nat" else {"clean": N_VAL, adv: N_VAL}  # fit's validation each epoch
        if adv != "nat":  # and the PGD monitor on 256 training images
            val["pgd"] = val.get("pgd", 0) + N_MON
        for kind, n in val.items():
            add(stage, runs * n, s[f"{net}/eval/{kind}"], FWD[f"eval/{kind}"], net)

    for adv in c.ADV:
        train("sources + baselines: 6 x 200 epochs", arch, adv, 2 * 200)
        for frac in (0.0, frac12, 1.0):  # unfreeze 1, 12, 56; forward + backward through the trainable part
            train("transfers: 27 x 50 epochs", arch, adv, 3 * 50, 1.0 if full_cost else (1 + 2 * frac) / 3)
    if "densenet121/train/nat" in s:  # trained, crafts the black-box FGSM + PGD-7 sets, evaluated (no strong/curve)
        train("densenet121: 200 epochs", "densenet121", "nat", 200)
        d = lambda kind: s[f"densenet121/eval/{kind}"]
        add("densenet121: black-box sets + its eval", N_TEST, 2 * (d("fgsm") + d("pgd")) + d("clean"),
            2 * (FWD["eval/fgsm"] + FWD["eval/pgd"]) + 1, "densenet121")
    e, n = (lambda kind: s[f"{arch}/eval/{kind}"]), N_EVALS * N_TEST
    add("eval: clean + WB FGSM + WB PGD-7", n, e("clean") + e("fgsm") + e("pgd"), 1 + 3 + 15)
    add("eval: 2 black-box sets (CIFAR-10 models)", 2 * N_BB_EVALS * N_TEST, e("clean"), 1)
    # evaluate.py's later restarts attack only the survivors: every image in every restart is an upper bound
    add("eval: PGD-50 x 10 restarts (upper bound)", 10 * n, 50 * (e("pgd") - e("clean")) / 7 + e("clean"), 101)
    add("eval: curve, 6 more eps x PGD-7", 6 * n, e("pgd"), 15)  # 7 eps; 8/256 reuses WB PGD-7
    t, f = (sum(v[i] for v in out.values()) for i in (0, 1))
    return {"stages_h": {k: v[0] / 3600 for k, v in out.items()}, "total_h": t / 3600, "total_pflop": f / 1e15,
            "achieved_tflops": f / t / 1e12}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def main(argv=None):
    a = get_args(argv)
    if a.batch_size < 1 or a.repeats < 1 or a.iters < 1:
        raise c.UsageError("--batch-size, --repeats and --iters must be positive")
    dev, cuda = a.device, a.device.startswith("cuda")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_flush_denormal(a.flush_denormal)
    name = torch.cuda.get_device_name(dev) if cuda else cpu_name()
    peak = a.peak_tflops or next((v for k, v in PEAKS.items() if cuda and k in name), None)
    prov = {**c.provenance(dev), "device_name": name, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    print(f"bench on {name} ({dev}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{a.repeats} timings x {a.iters} steps per row, batch {a.batch_size} clean + {a.batch_size} adversarial, "
          f"{c.eps_str(c.EPS)}")
    archs = {a.arch: c.ADV, **({"densenet121": ("nat",)} if a.densenet else {})}
    flops, frac12 = {}, None
    for arch in archs:
        macs, macs12 = fwd_macs(c.build_model(arch, 10, a.growth))
        flops[arch], frac12 = 2 * macs, frac12 or macs12 / macs
        print(f"{arch}: {macs / 1e6:.1f} M multiply-adds = {2 * macs / 1e6:.1f} MFLOP per forward pass of one image")
    n = max(10 * a.batch_size, (500 if cuda else a.batch_size) * a.iters)  # the evaluation set is its head
    x, y = (t.to(dev) for t in c.synthetic("cifar10", True, n))  # CIFAR-10-like uint8 data on the device
    print(f"\n{'row':24s} {'project img/s':>14s} {'reference img/s':>16s} {'speedup':>8s} {'TFLOP/s':>8s} "
          f"{'% peak':>7s}" + (" syncs" if cuda else ""), flush=True)
    rows = {}
    for arch, advs in archs.items():
        rows.update(bench_arch(a, arch, advs, x, y, flops, peak))
    est = {"flop_scaled": estimate(rows, a.arch, flops, frac12, False),
           "transfers_full_cost": estimate(rows, a.arch, flops, frac12, True)}
    for e in est.values():
        e["peak_frac"] = e["achieved_tflops"] / peak if peak else None
    e, ef = est["flop_scaled"], est["transfers_full_cost"]
    print(f"\n`make all` on one {name}, one job at a time, from the project's rates (transfers with unfreeze 1 "
          f"and 12 scaled by their training FLOPs; [counted at full cost]):")
    for k, h in e["stages_h"].items():
        print(f"  {k:42s} {h:10.1f} h  [{ef['stages_h'][k]:.1f} h]")
    print(f"  {'total':42s} {e['total_h']:10.1f} h  [{ef['total_h']:.1f} h] = {e['total_h'] / 24:.1f} days; "
          f"{e['total_pflop']:.0f} PFLOP at {e['achieved_tflops']:.3f} TFLOP/s"
          + (f" = {100 * e['peak_frac']:.2f}% of the {peak:g} TFLOP/s peak" if peak else " (no peak known: --peak-tflops)"))
    prov["loadavg_after"] = os.getloadavg()
    result = {"args": vars(a), "provenance": prov, "peak_tflops": peak, "flops_fwd_per_image": flops,
              "unfreeze12_macs_frac": frac12, "rows": rows, "make_all": est}
    c.atomic_save(result, a.out)
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    c.run_main(main)

"""Shared pieces of the reproduction of Davchev et al. 2019, "Towards Evaluating and Understanding Robust
Optimisation under Transfer" (arXiv 1905.02675): data, models, attacks, the mixed-loss training step,
freezing and checkpoints.

A library without side effects: nothing here touches a device, a file, the argument parser or a seed at import.
Every script passes its device in. Inputs are [0, 1] floats everywhere; the models map them to [-1, 1] (the
paper's range, Sec. 2.2) as their first operation, so eps = 8/256 here is 0.0625 on the paper's scale.
"""
import argparse
import contextlib
import contextvars
import copy
import dataclasses
import errno
import json
import math
import os
import shutil
import sys
import tempfile
import time
import weakref

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 8 / 256  # the paper's 0.0625 on [-1, 1] (Sec. 2.3), on the [0, 1] scale used here
ADV = ("nat", "fgsm", "pgd")


class UsageError(Exception):
    """Bad input a person can fix: the scripts print the message on one line and exit with status 2."""


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def run_main(main, interrupted="interrupted; run the same command again to resume from the last completed epoch "
                               "(X.last.pt beside each output)"):
    """Run a script's main(): bad input becomes one line on stderr and exit status 2, never a traceback; Ctrl-C
    says what was kept and how to go on (`interrupted`, the script's own words)."""
    try:
        main()
    except UsageError as e:
        die(str(e))
    except KeyboardInterrupt:
        die(interrupted)
    except OSError as e:  # a full disk outside atomic_save (a log line): one line too; what was saved is kept
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        die(f"{e.strerror}" + (f" ({e.filename})" if e.filename else "") + "; the last saved state is kept: free "
            "some space and run the same command again")


def binomial_se(acc, n):
    """Standard error (points) of an accuracy of acc % measured on n images: the test set's own sampling noise.
    Agresti-Coull's (two successes and two failures added): 0 of 50 right is not a certain 0%, and the plain
    sqrt(p(1-p)/n) would call it exact."""
    q = (acc / 100 * n + 2) / (n + 4)
    return 100 * math.sqrt(q * (1 - q) / (n + 4))


def eps_str(eps):
    return f"eps {eps * 256:g}/256 = {eps:.5f} on [0,1] = {2 * eps:.4f} on the paper's [-1,1] scale"


# ----------------------------------------------------------------------------------------------------------
# Data
# The whole dataset lives on the device as uint8 NCHW and is augmented there in batches (airbench style):
# no DataLoader workers, no per-image Python.

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def synthetic(name, train, n=None):
    """A learnable offline stand-in for CIFAR: one smooth random colour pattern per class plus noise.

    Classes differ by low-frequency patterns of amplitude ~0.2 with per-image noise, so a small ResNet learns
    them in an epoch or two, while an eps = 8/256 attack still moves a naturally trained model: adversarial
    training changes measurable numbers. The 10 'cifar10' patterns are blends of pairs of the 100 'cifar100'
    ones: other classes made of the same parts, so that transfer has something to carry over, as between
    the real datasets. Deterministic: the patterns are fixed, the noise depends on the split.
    """
    k = NUM_CLASSES[name]
    n = n or (5000 if train else 1000)
    g = torch.Generator().manual_seed(100)
    proto = F.interpolate(torch.rand(100, 3, 4, 4, generator=g), size=32, mode="bilinear", align_corners=False)
    if k == 10:
        proto = (proto[0:20:2] + proto[1:20:2]) / 2
    g = torch.Generator().manual_seed(1000 * k + int(train))
    y = torch.arange(n) % k
    y = y[torch.randperm(n, generator=g)]
    x = 0.5 + 0.45 * (proto[y] - 0.5) + 0.12 * torch.randn(n, 3, 32, 32, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), y


def _check_arrays(x, y, path, k):
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise UsageError(f"{path}: x must be uint8 of shape N x 32 x 32 x 3, got {x.dtype} {x.shape}; "
                         f"write it with x as uint8 HWC images and y as int64 labels")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"{path}: y must be {len(x)} integer labels, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise UsageError(f"{path}: labels must lie in [0, {k - 1}] for {k} classes, got [{y.min()}, {y.max()}]; "
                         f"is this the right dataset?")
    m = len(np.unique(y))
    if len(y) >= 10 * k and m < k:  # e.g. CIFAR-10 saved as cifar100_*.npz: in range, but 10 of 100 classes
        raise UsageError(f"{path}: {len(y):,} images hold labels of only {m} of the {k} classes of "
                         f"{'CIFAR-10' if k == 10 else 'CIFAR-100'}; is this the right dataset?")


def load_split(name, data_dir, train):
    """(x uint8 N x 3 x 32 x 32, y int64) on the CPU.

    data_dir is 'synthetic' (built in, offline), a folder with {name}_{train,test}.npz holding x (uint8
    N x 32 x 32 x 3) and y (int64), or a torchvision root (downloaded when missing).
    """
    if name not in NUM_CLASSES:
        raise UsageError(f"unknown dataset {name!r}; choose cifar10 or cifar100")
    k = NUM_CLASSES[name]
    if data_dir == "synthetic":
        return synthetic(name, train)
    npz = os.path.join(data_dir, f"{name}_{'train' if train else 'test'}.npz")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir {data_dir} is a file, not a folder; pass the folder holding "
                         f"{os.path.basename(npz)} (or a torchvision root), or --data-dir synthetic")
    if not os.path.exists(npz) and os.path.isdir(data_dir) and any(f.endswith(".npz") for f in os.listdir(data_dir)):
        raise UsageError(f"--data-dir {data_dir} holds .npz files but not {os.path.basename(npz)}; a folder of .npz "
                         f"files needs cifar10_train/test.npz and cifar100_train/test.npz")
    if os.path.exists(npz):
        try:
            with np.load(npz) as f:
                x, y = f["x"], f["y"]
        except Exception as e:
            raise UsageError(f"{npz}: cannot read ({type(e).__name__}: {e}); it needs arrays x and y")
        _check_arrays(x, y, npz, k)
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y.astype(np.int64))
    try:
        import torchvision
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        ds = cls(data_dir, train=train, download=True)
    except Exception as e:
        raise UsageError(f"no {name} in {data_dir!r} and it could not be downloaded ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); connect to the internet, put "
                         f"{name}_train.npz/{name}_test.npz there, or use --data-dir synthetic")
    x, y = np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64)
    _check_arrays(x, y, data_dir, k)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)


def load_data(name, data_dir, limit=None, val_frac=0.05):
    """Training data split into train/validation with a fixed seed (47,500 / 2,500 for CIFAR, as the authors).

    limit takes the first N training images before the split, for quick runs. The test set is never used
    for model selection (that is evaluate.py's alone).
    """
    x, y = load_split(name, data_dir, train=True)
    if limit:
        x, y = x[:limit], y[:limit]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_val = max(1, round(val_frac * len(x)))
    return (x[perm[n_val:]], y[perm[n_val:]]), (x[perm[:n_val]], y[perm[:n_val]])


def augment(x, gen):
    """Random crop 32 with zero padding 4 and random horizontal flip, for a uint8 batch on its device."""
    n = len(x)
    xp = F.pad(x, (4, 4, 4, 4))
    dy, dx = (torch.randint(0, 9, (2, n), device=x.device, generator=gen))
    r = torch.arange(32, device=x.device)
    rows = (dy[:, None] + r)[:, None, :, None]
    cols = (dx[:, None] + r)
    flip = torch.rand(n, device=x.device, generator=gen) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    ar = torch.arange(n, device=x.device)[:, None, None, None]
    return xp[ar, torch.arange(3, device=x.device)[None, :, None, None], rows, cols]


def batches(x, y, batch_size, gen=None, train=False):
    """Yield (float [0,1] inputs, labels) batches from device-resident uint8 data; shuffled and augmented when
    train, in which case gen (a torch.Generator on the data's device) makes the epoch reproducible."""
    idx = torch.randperm(len(x), device=x.device, generator=gen) if train else torch.arange(len(x), device=x.device)
    for i in range(0, len(x), batch_size):
        j = idx[i:i + batch_size]
        xb = augment(x[j], gen) if train else x[j]
        yield xb.float().div_(255), y[j]


# ----------------------------------------------------------------------------------------------------------
# Models: architecture only. The first operation maps [0, 1] inputs to the paper's [-1, 1].

class _BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None  # option A: parameter-free shortcut

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + sc)


class ResNet(nn.Module):
    """CIFAR ResNet of He et al. 2015 (Sec. 4.2) as in akamaster/pytorch_resnet_cifar10, the authors' model.

    depth = 6n + 2: a 3x3 stem conv, three stages of n BasicBlocks (16/32/64 channels, strides 1/2/2) with
    option-A shortcuts, global average pooling and a linear head; kaiming-normal init.

    | depth | 10 classes | 100 classes |
    |-------|-----------:|------------:|
    | 20    |    269,722 |     275,572 |
    | 56    |    853,018 |     858,868 |   <- the paper's R: 1 stem + 54 block convs + 1 linear = 56 layers
    """

    def __init__(self, depth=56, num_classes=10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise UsageError(f"ResNet depth must be 6n+2 (8, 20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(nn.Sequential(*[_BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                          for i in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def features(self, x):
        out = F.relu(self.bn1(self.conv1(x * 2 - 1)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.linear(self.features(x))


class _Bottleneck(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([out, x], 1)


class DenseNet(nn.Module):
    """CIFAR DenseNet-BC in the kuangliu/pytorch-cifar style the authors used for the black-box source.

    DenseNet121: bottleneck dense blocks [6, 12, 24, 16], compression 0.5, a 3x3 stem of 2*growth channels.
    growth = 12 as in the authors' code (1,000,618 parameters, 10 classes); 32 is the standard DenseNet121
    (6,956,298 parameters).
    """

    def __init__(self, blocks=(6, 12, 24, 16), growth=12, num_classes=10, reduction=0.5):
        super().__init__()
        c = 2 * growth
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        layers = []
        for i, nb in enumerate(blocks):
            for _ in range(nb):
                layers.append(_Bottleneck(c, growth))
                c += growth
            if i < len(blocks) - 1:
                cout = int(math.floor(c * reduction))
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, cout, 1, bias=False), nn.AvgPool2d(2)]
                c = cout
        self.dense = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.dense(self.conv1(x * 2 - 1))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def build_model(arch, num_classes, growth=12):
    """'resnet56' (any resnetN with N = 6n+2) or 'densenet121'."""
    if arch.startswith("resnet") and arch[6:].isdigit():
        return ResNet(int(arch[6:]), num_classes)
    if arch == "densenet121":
        return DenseNet(growth=growth, num_classes=num_classes)
    raise UsageError(f"unknown architecture {arch!r}; use resnet56 (or resnet8/20/32/44/110) or densenet121")


def weight_layers(model):
    """Conv and linear layers in forward order: the 'layers' the paper counts (56 for ResNet56)."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# ----------------------------------------------------------------------------------------------------------
# Attacks: pure functions on [0, 1] inputs, L-infinity. Crafted in eval mode (BatchNorm running statistics)
# with no parameter gradients (authors' code; Pang et al. 2021); the model is left exactly as found.

_PRECISION = contextvars.ContextVar("precision", default="bf16")


@contextlib.contextmanager
def _setting(var, value):
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def precision(p):
    """Within it the models run in p on CUDA: 'bf16' (autocast, the default) or 'fp32' (evaluate.py --precision
    fp32: is a bf16 attack as strong?). The CPU runs fp32 either way."""
    return _setting(_PRECISION, p)


def autocast(device):
    """bf16 autocast on CUDA (no grad scaler needed), a null context elsewhere (fp32 on CPU) or under precision
    fp32. No cast cache: a CUDA graph must not keep casts of an earlier step's weights, and at these sizes the
    casts cost nothing."""
    dev = torch.device(device)
    return (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
            if dev.type == "cuda" and _PRECISION.get() == "bf16" else contextlib.nullcontext())


@contextlib.contextmanager
def frozen_eval(model):
    """Eval mode and requires_grad off for every parameter; restores each module's mode and each flag."""
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, t in zip(model.modules(), modes):
            m.training = t
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def _input_grad(model, x, y):
    """Gradient of the summed cross-entropy w.r.t. the input only; the input stays fp32 (autocast is inside)."""
    x = x.detach().requires_grad_(True)
    with autocast(x.device):
        loss = F.cross_entropy(model(x), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def _check_budget(eps, alpha=None, steps=1):
    if not eps >= 0 or (alpha is not None and not alpha >= 0) or steps < 0:
        raise UsageError(f"attack budget must be non-negative (eps={eps}, alpha={alpha}, steps={steps})")


def fgsm(model, x, y, eps):
    """Goodfellow et al. 2015: x' = clip(x + eps * sign(grad_x CE(model(x), y)), 0, 1)."""
    _check_budget(eps)
    with frozen_eval(model):
        return (x + eps * _input_grad(model, x, y).sign()).clamp_(0, 1).detach()


def pgd(model, x, y, eps, alpha, steps, random_start=False, gen=None):
    """Madry et al. 2018: steps of alpha * sign(grad), each projected onto the eps-ball around x and [0, 1].

    The paper: 7 steps, alpha = eps/4, no random start (the authors'). With random_start the walk begins at a
    uniform point of the eps-ball, drawn from gen (a torch.Generator on x's device; None: the global one).
    """
    _check_budget(eps, alpha, steps)
    with frozen_eval(model):
        xa = x.clone()
        if random_start:
            xa = (xa + torch.empty_like(x).uniform_(-eps, eps, generator=gen)).clamp_(0, 1)
        for _ in range(steps):
            xa = xa + alpha * _input_grad(model, xa, y).sign()
            xa = torch.min(torch.max(xa, x - eps), x + eps).clamp_(0, 1)
        return xa.detach()


def predict(model, x):
    """Labels the model predicts (eval mode, no gradients); used for FGSM's label-leaking fix."""
    with frozen_eval(model), torch.no_grad(), autocast(x.device):
        return model(x).argmax(1)


def attack(model, x, y, kind, eps, alpha=None, steps=7, random_start=False, gen=None):
    """The paper's adversaries by name: 'fgsm' or 'pgd' (alpha defaults to eps/4 as in Madry et al.)."""
    if kind == "fgsm":
        return fgsm(model, x, y, eps)
    if kind == "pgd":
        return pgd(model, x, y, eps, eps / 4 if alpha is None else alpha, steps, random_start, gen)
    raise UsageError(f"unknown attack {kind!r}; choose fgsm or pgd")


# ----------------------------------------------------------------------------------------------------------
# Training: the paper's mixed objective (Sec. 2.3). B clean images and B adversarial images crafted from them
# with the current parameters; loss = (CE(clean) + CE(adv)) / 2, the halves forwarded separately in train
# mode (separate BatchNorm batch statistics, as the authors). Natural training is the clean half alone.

def train_step(model, opt, x, y, adv="nat", eps=EPS, steps=7, random_start=False, label_fix=True, gen=None):
    """One optimiser step; returns detached (loss, clean correct, adv correct) tensors: no host sync here.

    FGSM crafts with the model's own predictions (label-leaking fix, Kurakin et al. 2016) when label_fix;
    PGD crafts with the true labels (Madry et al.). gen draws PGD's random start.
    """
    x_adv = None
    if adv != "nat":
        y_craft = predict(model, x) if adv == "fgsm" and label_fix else y
        x_adv = attack(model, x, y_craft, adv, eps, steps=steps, random_start=random_start, gen=gen)
    with autocast(x.device):
        out = model(x)
        loss = F.cross_entropy(out, y)
        correct_adv = torch.zeros((), device=x.device, dtype=torch.long)
        if x_adv is not None:
            out_adv = model(x_adv)
            loss = (loss + F.cross_entropy(out_adv, y)) / 2
            correct_adv = (out_adv.argmax(1) == y).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), (out.argmax(1) == y).sum(), correct_adv


def eval_step(model, kind=None, eps=EPS, alpha=None, steps=7, random_start=False, capture=None):
    """f(x, y) -> bool tensor: which inputs the model classifies correctly, clean or under a white-box attack
    with the true labels. Captured per batch size where it can be (capture: auto, on or off; None: the
    process's, see capturing), else eager."""
    def eager(x, y):
        if kind:
            x = attack(model, x, y, kind, eps, alpha, steps, random_start)
        return predict(model, x) == y
    mode = capture or _CAPTURE.get()
    why = why_eager(mode, _device_of(model), random_start)  # a random start differs on every call: not replayable
    graphs = _CAPTURED.evals.setdefault(model, {})

    def step(x, y):
        if why or _CAPTURED.fallback:
            return eager(x, y)
        key = (kind, eps, alpha, steps, len(y), _PRECISION.get())
        if key not in graphs:  # attacks leave the model as found: nothing to restore after the warm-up
            xs, ys = x.clone(), y.clone()
            what = f"{kind or 'clean'} evaluation graph (batch {len(y)})"

            def check(out):  # the first replay against eager predictions on the same batch
                n = (out != eager(x, y)).sum().item()
                return n / len(y), (f"{n} of {len(y)} predictions differ from eager ones (tolerance "
                                    f"{CHECK_FRAC:.0%} of a batch)" if n > max(1, CHECK_FRAC * len(y)) else None)
            if _CAPTURED.pool is None:
                _CAPTURED.pool = torch.cuda.graph_pool_handle()
            got = _capture(lambda: eager(xs, ys), [], (), [(xs, x), (ys, y)], check, what, mode == "on",
                           _CAPTURED.pool)
            if got is None:
                return eager(x, y)
            graphs[key] = (xs, ys, *got)
            return got[1].clone()  # the first replay ran on x, y
        xs, ys, graph, out = graphs[key]
        xs.copy_(x)
        ys.copy_(y)
        graph.replay()
        return out.clone()
    return step


def accuracy(model, x, y, batch_size=500, kind=None, eps=EPS, steps=7, random_start=False, alpha=None):
    """Accuracy (%) on device-resident uint8 data, clean or under a white-box attack with the true labels."""
    f = eval_step(model, kind, eps, alpha, steps, random_start)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for xb, yb in batches(x, y, batch_size):
        correct += f(xb, yb).sum()
    return 100 * correct.item() / max(1, len(x))


# ----------------------------------------------------------------------------------------------------------
# Captured steps. On CUDA one ResNet56 at batch 100 is launch-bound: the GPU waits on ~1,000 small kernel
# launches per step. So a step is recorded once as a CUDA graph and replayed on fixed input buffers, the same
# Python code eager on the CPU (and for a batch of another size, the last partial one). A cohort (several
# models trained by one process) records every member's step in one graph, each on its own CUDA stream, so
# their kernels can overlap and fill the GPU. Every member keeps its own weights, optimiser and numbers.
#
# Safe on a first run (a new GPU, a torch version no test saw): --capture off (make CAPTURE=off) turns capture
# off; a capture that raises, or a first replay that disagrees with an eager step (the self-check), makes the
# process say so in one line and go on eagerly, with an eager run's results. What ran is recorded with the
# results (steps_ran).

CAPTURE = ("auto", "on", "off")  # auto: captured on CUDA where it can be; on: the same, but a failure stops the run
_CAPTURE = contextvars.ContextVar("capture", default="auto")
# The self-check's tolerances. No GPU has measured how far two eager runs of a bf16 step lie apart (`make
# gpu-check` prints it), so they come from a bound, not a measurement. Captured and eager run the same kernels;
# they can differ only where a library picks another algorithm or summation order inside the capture: a few bf16
# roundings (2^-9 relative each) per value, a fraction of a percent after a deep network, more where an attack's
# sign() flips on a near-zero gradient. A training step may differ from eager by CHECK_RTOL of what it changed
# (its weight update, momentum, BatchNorm statistics; its loss; accuracies as a fraction of the batch); the
# broken captures the check is for change them by 50% or more (a learning rate the graph does not see, momentum
# left by the warm-up, another member's update). An evaluation graph may disagree with eager predictions on
# CHECK_FRAC of a batch (at least one image): never more than one point on any accuracy.
CHECK_RTOL = 0.05
CHECK_FRAC = 0.01


@dataclasses.dataclass
class _Process:
    """The captured steps of this process: graphs are the process's, not a call's."""
    # every graph ever captured, never freed: in torch 2.14 CUDAGraph::reset clears the cuBLAS workspaces of its
    # capture stream, which a graph still alive may use (an open upstream issue)
    graphs: list = dataclasses.field(default_factory=list)
    # model -> {(attack, eps, alpha, steps, batch, precision): (static x, static y, graph, output)}
    evals: weakref.WeakKeyDictionary = dataclasses.field(default_factory=weakref.WeakKeyDictionary)
    # the memory pool every evaluation graph shares: their replays never overlap, and each output is cloned at
    # once, so one pool holds what the largest needs instead of the sum (a PGD graph at batch 500: ~1.3 GB)
    pool: object = None
    fallback: str = None  # why this process stopped capturing (a capture or a self-check failed): eager from then on
    checks: list = dataclasses.field(default_factory=list)  # each graph's self-check: what, difference, seconds


_CAPTURED = _Process()


class _Mismatch(Exception):
    """A first replay that differs from eager beyond bf16 noise."""


def capturing(mode):
    """Within it make_step and eval_step capture as mode says (auto, on, off) unless told otherwise: fit and
    evaluate.py set the --capture flag here, for their validation and attacks too."""
    return _setting(_CAPTURE, mode)


def why_eager(capture, device, random_start=False):
    """None where steps are captured, else why they run eagerly, as recorded: 'switch' (--capture off),
    'fallback: ...' (a capture of this process failed), 'cpu', 'random start' (a replay cannot redraw it)."""
    if (capture or _CAPTURE.get()) == "off":
        return "switch"
    if _CAPTURED.fallback:
        return "fallback: " + _CAPTURED.fallback
    if torch.device(device).type != "cuda":
        return "cpu"
    return "random start" if random_start else None


def steps_ran(device, why, counts=None):
    """What ran, as recorded with results (checkpoints' and X.eval.json's "steps_ran"): 'captured' or 'eager' and
    why, how many steps ran each way, this process's self-checks, the device and the versions."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    why = why or ("fallback: " + _CAPTURED.fallback if _CAPTURED.fallback else None)
    return {"steps": "eager" if why else "captured", "why": why, **(counts or {}),
            "self_checks": list(_CAPTURED.checks),
            "device": torch.cuda.get_device_name(dev) if cuda else "cpu", "torch": str(torch.__version__),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "peak_memory_gib": round(torch.cuda.max_memory_reserved(dev) / 2**30, 2) if cuda else None}


def _device_of(model):
    return next(iter(model.state_dict().values()), torch.empty(0)).device  # a model without weights: the CPU


def _set_lrs(opts, lrs):
    for o, lr in zip(opts, lrs):
        for g, v in zip(o.param_groups, lr):
            if torch.is_tensor(g["lr"]):
                g["lr"].fill_(v)
            else:
                g["lr"] = v


def _capture(fn, state, opts, inputs, check, what, strict, pool=None):
    """Record fn() as a CUDA graph and replay it once; returns (graph, fn's outputs, which each replay rewrites in
    place), or None where any part failed: the process then runs eagerly (strict: the error stands).

    Three warm-up calls on a side stream come first (the PyTorch recipe: cuDNN's choices, the allocator, the
    optimiser's buffers). They are real updates, so `state` (the tensors fn changes in place) is restored after
    them, and the optimiser buffers they created start at zero: SGD's first step, buf = grad, equals
    0.9 * 0 + grad. The warm-up and the capture run on other inputs (the batch rolled by one image; `inputs` are
    (static buffer, real batch) pairs) and a learning rate of 0, so that a graph which baked either in fails the
    self-check: check(out) compares the first replay, on the real batch and learning rate, with eager and returns
    (difference, None or what is wrong). On failure everything is put back as before the attempt.
    """
    saved = [t.clone() for t in state]
    before = [{p: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()} for p, st in o.state.items()}
              for o in opts]
    lrs = [[float(g["lr"]) for g in o.param_groups] for o in opts]
    stream, phase = torch.cuda.current_stream(), "warm-up"
    graph = torch.cuda.CUDAGraph()
    _CAPTURED.graphs.append(graph)
    try:
        for xs, x in inputs:
            xs.copy_(x.roll(1, 0))
        _set_lrs(opts, [[0.0] * len(lr) for lr in lrs])
        side = torch.cuda.Stream()
        side.wait_stream(stream)
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        stream.wait_stream(side)
        with torch.no_grad():
            for t, v in zip(state, saved):
                t.copy_(v)
            for o, b in zip(opts, before):
                for p, st in o.state.items():
                    for k, t in st.items():
                        if torch.is_tensor(t):
                            t.copy_(b[p][k]) if k in b.get(p, {}) else t.zero_()
        for o in opts:
            o.zero_grad(set_to_none=True)  # the graph's backward allocates the gradients in its own memory pool
        phase = "capture"
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
        phase = "first replay"
        for xs, x in inputs:
            xs.copy_(x)
        _set_lrs(opts, lrs)
        graph.replay()
        phase = "self-check"
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        diff, wrong = check(out)
        _CAPTURED.checks.append({"what": what, "difference": diff, "seconds": time.perf_counter() - t0})
        if wrong:
            raise _Mismatch(wrong)
        return graph, out
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        reason = (f"the self-check of the captured {what} failed: {e}" if isinstance(e, _Mismatch) else
                  f"capturing the {what} failed in its {phase} ({type(e).__name__}: {first})")
        if strict:
            raise RuntimeError(f"{reason}; --capture on stops here (auto would go on eagerly)") from e
        torch.cuda.set_stream(stream)  # a capture that raised can leave its own stream current
        torch.cuda.synchronize()
        with torch.no_grad():
            for t, v in zip(state, saved):
                t.copy_(v)
        for o, b in zip(opts, before):  # the optimiser's state as before: buffers made since are dropped
            o.state.clear()
            o.state.update(b)
            o.zero_grad(set_to_none=True)
        _set_lrs(opts, lrs)
        _CAPTURED.fallback = reason
        print(f"warning: {reason}; continuing eagerly in this process (an eager run's results, slower); "
              f"--capture off (make CAPTURE=off) skips capture", file=sys.stderr, flush=True)
        return None


def _member_state(m, o):
    """What a training step changes in a member, by kind: weights, float buffers (BatchNorm statistics), integer
    buffers (num_batches_tracked), momentum (zeros where there is none yet)."""
    ps = list(m.parameters())
    mom = [o.state.get(p, {}).get("momentum_buffer") for p in ps]
    return {"weights": ps, "statistics": [b for b in m.buffers() if b.is_floating_point()],
            "counters": [b for b in m.buffers() if not b.is_floating_point()],
            "momentum": [torch.zeros_like(p) if b is None else b for p, b in zip(ps, mom)]}


def step_difference(outs, want, got, ref, base, n):
    """How far a training step lies from a reference step taken from the same state: outs/want are the members'
    (loss, clean correct, adv correct), got/ref/base their _member_state after each step and before. Returns
    (the largest relative difference, what it is): losses relative, accuracies as a fraction of the n images,
    weights, statistics and momentum as |got - ref| / |ref - base|; unequal integer buffers count as infinite."""
    def flat(ts):
        return torch.cat([t.detach().flatten().float() for t in ts]) if ts else torch.zeros(1)
    worst = (0.0, "nothing")
    for i, (o, w, g, r, b) in enumerate(zip(outs, want, got, ref, base)):
        same = all(torch.equal(x, y) for x, y in zip(g["counters"], r["counters"]))
        d = {"loss": ((o[0] - w[0]).abs() / (w[0].abs() + 1e-12)).item(), "integer buffers": 0.0 if same else math.inf,
             "clean accuracy": abs(o[1].item() - w[1].item()) / n,
             "adversarial accuracy": abs(o[2].item() - w[2].item()) / n}
        for k in ("weights", "statistics", "momentum"):
            d[k + " update"] = ((flat(g[k]) - flat(r[k])).norm() / ((flat(r[k]) - flat(b[k])).norm() + 1e-12)).item()
        k = max(d, key=d.get)
        if d[k] > worst[0]:
            worst = (d[k], f"member {i + 1}'s {k}")
    return worst


def make_step(models, opts, adv, eps=EPS, steps=7, random_start=False, label_fix=True, capture=None):
    """The training step of a cohort: step(batches, gens) -> [(loss, clean correct, adv correct)], one entry per
    member, for batches [(x, y)] and random-start generators gens, one per member. step.ran says how the steps
    ran: why they are eager (None: captured) and how many ran each way.

    Eager: train_step for each member in turn, exactly a separate run's computation. Captured (capture auto or on,
    on CUDA): all members in one graph; a random start is drawn from each member's own generator, which a replay
    cannot redraw, so --random-start stays eager.
    """
    mode = capture or _CAPTURE.get()
    ran = {"why": why_eager(mode, _device_of(models[0]), random_start), "capture": mode, "captured": 0, "eager": 0,
           "cohort": len(models)}

    def eager(batches, gens):
        return [train_step(m, o, x, y, adv, eps, steps, random_start, label_fix, g)
                for m, o, (x, y), g in zip(models, opts, batches, gens)]
    g = {}

    def step(batches, gens):
        if not ran["why"] and _CAPTURED.fallback:  # a capture of this process failed: eager from now on
            ran["why"] = "fallback: " + _CAPTURED.fallback
        if ran["why"] or (g and len(batches[0][1]) != len(g["ys"][0])):  # or the partial last batch: another shape
            ran["eager"] += 1
            return eager(batches, gens)
        if not g:
            g["xs"], g["ys"] = [x.clone() for x, _ in batches], [y.clone() for _, y in batches]
            streams = [torch.cuda.Stream() for _ in models]

            def all_members():
                main, outs = torch.cuda.current_stream(), []
                for m, o, x, y, s in zip(models, opts, g["xs"], g["ys"], streams):
                    s.wait_stream(main)  # fork ...
                    with torch.cuda.stream(s):
                        outs.append(train_step(m, o, x, y, adv, eps, steps, False, label_fix))
                for s in streams:
                    main.wait_stream(s)  # ... and join, inside the graph
                return outs
            state = [t for m in models for t in list(m.parameters()) + list(m.buffers())]
            refs, ref_opts = copy.deepcopy((models, opts))  # the members as they are, for the self-check

            def check(out):  # the first replay against an eager step of the copies, same batch, same state
                base = [{k: [t.clone() for t in v] for k, v in _member_state(m, o).items()}
                        for m, o in zip(refs, ref_opts)]
                want = [train_step(m, o, x, y, adv, eps, steps, False, label_fix)
                        for m, o, (x, y) in zip(refs, ref_opts, batches)]
                d, where = step_difference(out, want, [_member_state(m, o) for m, o in zip(models, opts)],
                                           [_member_state(m, o) for m, o in zip(refs, ref_opts)], base,
                                           len(batches[0][1]))
                return d, (f"{where} differs from an eager step's by {d:.1%} (tolerance {CHECK_RTOL:.0%})"
                           if d > CHECK_RTOL else None)
            what = f"training step ({len(models)} model{'s' * (len(models) > 1)})"
            got = _capture(all_members, state, opts, list(zip(g["xs"] + g["ys"], [x for x, _ in batches] +
                                                                [y for _, y in batches])), check, what, mode == "on")
            if got is None:
                g.clear()
                return step(batches, gens)
            g["graph"], g["out"] = got
        else:
            for xs, ys, (x, y) in zip(g["xs"], g["ys"], batches):
                xs.copy_(x)
                ys.copy_(y)
            g["graph"].replay()
        ran["captured"] += 1
        return g["out"]
    step.ran = ran
    return step


# ----------------------------------------------------------------------------------------------------------
# Freezing: the paper's three transfer strategies (Sec. 2.1) as the authors' code implemented them, and the depths
# between them, all on one scale: bK = the last K of the residual blocks (counted from the output) plus the head,
# the stem counted last. On ResNet56 (27 blocks) the paper's three are points of it: 1 = b0 (the head), 12 = b9 (all
# of layer3, as the authors' code; the paper's "last block"), 56 = b28 (everything, the stem the 28th unit). Those
# three keep their paper labels and bK names only the depths between, so each depth has one name in flags,
# checkpoint names, recorded arguments and the report. README: the table K -> weight layers -> parameters.

UNFREEZE = {1: "the new head only", 12: "the last stage (layer3) and the head", 56: "every layer"}
PAPER_K = {1: 0, 12: 9, 56: 28}  # the paper's depths on ResNet56's scale of K
# every allowed --unfreeze, shallow to deep (the Makefile's UNFREEZE_OK is this list)
DEPTHS = (1, *(f"b{k}" for k in range(1, 9)), 12, *(f"b{k}" for k in range(10, 28)), 56)
DEPTH_SWEEP = (1, "b1", "b3", "b6", 12, "b14", "b18", 56)  # `make depth`'s default DEPTHS: head to everything


def parse_unfreeze(u):
    """A --unfreeze value as it is recorded: 1, 12, 56 (int) or 'bK' (str, 1 <= K <= 27, K != 9)."""
    s = str(u)
    if s in ("1", "12", "56"):
        return int(s)
    k = int(s[1:]) if s[:1] == "b" and s[1:].isdigit() else None
    paper = {v: p for p, v in PAPER_K.items()}.get(k)
    if paper is not None:
        raise UsageError(f"--unfreeze {s} is the paper's {paper}: {UNFREEZE[paper]}; write {paper}, so that one "
                         f"depth has one name")
    if k is None or not 1 <= k <= 27 or s != f"b{k}":
        raise UsageError(f"--unfreeze {s}: use 1, 12 or 56 (the paper's three strategies) or bK, the last K of "
                         f"ResNet56's 27 residual blocks plus the head (K = 1..27 but 9, which is 12), e.g. b3")
    return s


def depth_k(unfreeze, n_blocks=27):
    """A depth's place on the scale, in residual blocks unfrozen from the output: 1 -> 0, 12 -> the last stage's
    blocks (9 on ResNet56), 56 -> all blocks + 1 (the stem), bK -> K. n_blocks: the ResNet's (27 for ResNet56)."""
    u = parse_unfreeze(unfreeze)
    return {1: 0, 12: n_blocks // 3, 56: n_blocks + 1}[u] if isinstance(u, int) else int(u[1:])


def describe_unfreeze(unfreeze):
    """What a depth trains, in words."""
    u = parse_unfreeze(unfreeze)
    if isinstance(u, int):
        return UNFREEZE[u]
    return "the last residual block and the head" if u == "b1" else f"the last {u[1:]} residual blocks and the head"


def freeze(model, unfreeze):
    """Set requires_grad for a depth (parse_unfreeze): 1 (the head), 12 (layer3 + head: the authors' loop unfreezes
    all of layer3, which the paper calls 'the last block'), 56 (everything) or bK (the last K residual blocks and
    the head). Returns the trainable parameters for the optimiser."""
    blocks = [*model.layer1, *model.layer2, *model.layer3]  # forward order: the last K are blocks[len - K:]
    k = depth_k(unfreeze, len(blocks))
    if isinstance(parse_unfreeze(unfreeze), str) and k > len(blocks):  # a smaller ResNet than ResNet56
        raise UsageError(f"--unfreeze {unfreeze}: this ResNet has {len(blocks)} residual blocks; use a bK with K <= "
                         f"{len(blocks)}, or 56 for everything")
    train = [model] if k == len(blocks) + 1 else [model.linear, *blocks[len(blocks) - k:]]
    for p in model.parameters():
        p.requires_grad_(False)
    for m in train:
        for p in m.parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def depth_table(arch="resnet56", num_classes=10):
    """[(depth, K, trainable weight layers, trainable parameters)] for every allowed depth (README's table)."""
    model, rows = build_model(arch, num_classes), []
    n_blocks = len([*model.layer1, *model.layer2, *model.layer3])
    for u in DEPTHS:
        if isinstance(u, str) and depth_k(u) > n_blocks:
            continue  # beyond a smaller ResNet's blocks
        params = freeze(model, u)
        layers = sum(m.weight.requires_grad for m in weight_layers(model))
        rows.append((u, depth_k(u, n_blocks), layers, sum(p.numel() for p in params)))
    return sorted(rows, key=lambda r: r[1])


# The paper's grid as the Makefile builds it by default; bench.py's estimate counts from here.
GRID = {"sources": ADV, "baselines": ADV, "transfer cohorts": [(s, t) for s in ADV for t in ADV],
        "unfreeze": tuple(UNFREEZE)}


def set_train_mode(model, freeze_bn=False):
    """model.train(); with freeze_bn, BatchNorm layers whose parameters are frozen keep their running
    statistics (eval mode). The authors left them adapting to CIFAR-10, which is the default."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and not m.weight.requires_grad:
                m.eval()


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: plain self-describing dicts, written atomically (name.tmp, then os.replace).

def atomic_save(obj, path):
    """Write path.tmp, then rename it over path. When the write fails (a full disk: torch.save raises a RuntimeError,
    json an OSError) path.tmp is removed and path keeps its last good state: a one-line UsageError. Ctrl-C too
    leaves no path.tmp."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    try:
        if isinstance(obj, (dict, list)) and path.endswith(".json"):
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=1)
                f.write("\n")
        else:
            try:
                torch.save(obj, tmp)
            except RuntimeError as e:  # torch's writer hides the OS error ("unexpected pos 704 vs 598")
                raise OSError(f"torch.save failed: {str(e).splitlines()[0]}") from e
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if not isinstance(e, OSError):
            raise
        free = shutil.disk_usage(os.path.dirname(path) or ".").free / 2**20
        raise UsageError(f"could not write {path} ({e.strerror or e}; {free:,.0f} MiB free on its disk); the partial "
                         f"file is removed and {os.path.basename(path)} is left as it was (its last saved state); free "
                         f"some space and run the same command again") from None


def check_writable(path, flag="--out"):
    """Fail before any work when `path` could not be written (a run whose result cannot be saved is lost). Creates
    nothing: the nearest existing folder above it must be a writable folder."""
    d = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(d):
        if os.path.lexists(d):
            raise UsageError(f"{flag} {path}: {d} is a file, not a folder; pass another path")
        d = os.path.dirname(d)
    try:  # an unnamed temporary file: a real write, and nothing left behind
        tempfile.TemporaryFile(dir=d).close()
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write into {d} ({e.strerror or e}); pass a writable path")


@contextlib.contextmanager
def output_lock(path, flag="--out"):
    """An exclusive lock on `path` for the whole run (flock on path.lock, released when the process ends, even by
    kill -9): two runs on one output cannot interleave; the second fails at once naming the first."""
    import fcntl
    check_writable(path, flag)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        f = open(path + ".lock", "a+")
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there ({e.strerror or e}); pass a writable path")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UsageError(f"{flag} {path} is being written by another run ({holder}); wait for it to end or stop it")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}: {' '.join(sys.argv)}")
    f.flush()
    try:
        yield
    finally:
        f.close()  # the .lock file stays: removing it would race with a run that just opened it


def load_checkpoint(path, what="checkpoint", ours=False):
    """A checkpoint dict, read with torch.load's safe default (weights_only). ours: a file this project's scripts
    wrote for themselves (a resume state), for which 'delete it and rerun' is the right advice."""
    if not os.path.exists(path):
        raise UsageError(f"{what} {path} does not exist; train it first (see `make help`) or fix the path")
    fix = "delete it and rerun its stage" if ours else "pass a checkpoint written by this project's scripts"
    try:
        ck = torch.load(path, map_location="cpu")
    except Exception as e:
        raise UsageError(f"{what} {path} is not a readable checkpoint ({type(e).__name__}); {fix}")
    if not isinstance(ck, dict) or "model" not in ck or "arch" not in ck:
        raise UsageError(f"{what} {path} is not a checkpoint of this project; {fix}")
    return ck


def model_from_checkpoint(ck, device="cpu", what="checkpoint"):
    model = build_model(ck["arch"], ck["num_classes"], ck.get("growth", 12))
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UsageError(f"{what}: its weights do not fit the {ck['arch']} with {ck['num_classes']} classes it "
                         f"records ({first}); it was changed after training or not written by these scripts")
    return model.to(device)


def provenance(device):
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    # str(): torch.__version__ is a TorchVersion, which torch.load's safe default (weights_only) refuses
    return {"torch": str(torch.__version__), "device": name, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def pick_device(name):
    """'auto' (CUDA when there is one), 'cpu', 'cuda' or 'cuda:N', checked before any work."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return name


# ----------------------------------------------------------------------------------------------------------
# The training run shared by the three training scripts: a cohort of one or more models (several --seed
# values, several --unfreeze values) trained together, each with its own optimiser, schedule, validation,
# best/last checkpoints, resume state and log; the same files a separate run of each would write.

def add_training_args(p, epochs, wd, milestones, out):
    """The flags every training script takes; defaults are the authors' schedule for that stage."""
    p.add_argument("--out", default=out, help="final (best-validation) checkpoint; X.last.pt, X.json, X.jsonl, "
                   "X.log beside it. With several members, a template such as " + out.replace("%", "%%")
                   + " (the default)")
    p.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--wd", type=float, default=wd, help="weight decay")
    p.add_argument("--milestones", type=float, nargs="*", default=milestones,
                   help="lr x0.1 at these fractions of --epochs (authors: 100,150 of 200; 20,40 of 50)")
    p.add_argument("--batch-size", type=int, default=100, help="clean images per step; as many adversarial ones "
                   "are added (paper: 100, i.e. batches of 200; the authors' job files: 128)")
    p.add_argument("--eps", type=float, default=8, help="L-inf budget in pixel units of /256 (paper: 8/256)")
    p.add_argument("--steps", type=int, default=7, help="PGD steps (step size eps/4)")
    p.add_argument("--random-start", action=argparse.BooleanOptionalAction, default=False,
                   help="PGD random start in training (the authors: none)")
    p.add_argument("--label-fix", action=argparse.BooleanOptionalAction, default=True,
                   help="craft training FGSM with the model's predictions (label-leaking fix)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images (quick runs)")
    p.add_argument("--data-dir", default="data", help="torchvision root, a folder of *_train/test.npz, or 'synthetic'")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds, trained together")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--capture", choices=CAPTURE, default="auto", help="CUDA graphs for the steps: auto (where they "
                   "can be; a failure goes on eagerly), on (a failure stops the run), off (eager; make CAPTURE=off)")
    p.add_argument("--force", action="store_true", help="retrain even if the output exists (it is replaced)")
    return p


def check_training_args(a):
    if a.epochs < 1 or a.batch_size < 1 or (a.limit is not None and a.limit < 20):
        raise UsageError("--epochs and --batch-size must be positive and --limit at least 20")
    if not (a.eps >= 0 and a.steps >= 1 and a.lr > 0 and a.wd >= 0) or math.inf in (a.eps, a.lr, a.wd):
        raise UsageError(f"--eps and --wd must be non-negative, --steps and --lr positive "
                         f"(got eps={a.eps}, steps={a.steps}, lr={a.lr}, wd={a.wd})")
    if len(set(a.seed)) != len(a.seed):
        raise UsageError(f"--seed lists a seed twice ({' '.join(map(str, a.seed))})")
    if any(s < 0 for s in a.seed):
        raise UsageError(f"--seed must be non-negative, got {' '.join(map(str, a.seed))}")
    bad = [m for m in a.milestones if not 0 < m <= 1]
    if bad:
        raise UsageError(f"--milestones {' '.join(f'{m:g}' for m in a.milestones)}: milestones are fractions of "
                         f"--epochs in (0, 1], e.g. --milestones 0.5 0.75 for epochs 100 and 150 of 200")
    pick_device(a.device)


def member_paths(template, members, flag="--out"):
    """The member's output: the template (--out, or the script's default) filled with its values ({seed},
    {unfreeze}, ...). Several members need distinct paths, so a fixed --out is refused for them."""
    try:
        paths = [template.format(**m) for m in members]
    except (KeyError, IndexError, ValueError) as e:
        raise UsageError(f"{flag} {template!r}: unknown or malformed field {e}; use {{{'}, {'.join(members[0])}}}")
    if len(set(paths)) != len(paths):
        raise UsageError(f"{flag} {template} names one file for {len(paths)} models; with several --seed or "
                         f"--unfreeze values give a template, e.g. {flag} 'runs/x/m-{{unfreeze}}_s{{seed}}.pt'")
    if not all(p.endswith(".pt") for p in paths):
        raise UsageError(f"{flag} must name a .pt file, got {template!r}")
    return paths


def member(model, params, a, out, info, **values):
    """A cohort member for fit: its model, the parameters that train, its output, its recorded arguments (the
    script's flags with this member's own values: seed, unfreeze, ...) and what its checkpoint says of it."""
    args = {k: v for k, v in vars(a).items() if k not in ("device", "force", "capture")}  # how, not what
    return dict(model=model, params=params, out=out, args={**args, **values, "out": out}, info=info)


def fit_options(a):
    """fit's settings from the flags add_training_args defined (the scripts' one bridge to the library)."""
    return dict(epochs=a.epochs, lr=a.lr, wd=a.wd, milestones=a.milestones, batch_size=a.batch_size,
                eps=a.eps / 256, steps=a.steps, random_start=a.random_start, label_fix=a.label_fix,
                data_dir=a.data_dir, limit=a.limit, device=a.device, force=a.force, capture=a.capture)


def lr_at(epoch, lr, epochs, milestones):
    """The learning rate of 0-based `epoch`: x0.1 at each milestone, a fraction of `epochs` rounded, at least
    epoch 1 (a milestone rounded to 0 would cut the lr before any training, e.g. with --epochs 1). A pure
    function: resume restores no scheduler."""
    return lr * 0.1 ** sum(epoch >= max(1, round(f * epochs)) for f in milestones)


def set_lr(opt, lr):
    for g in opt.param_groups:
        if torch.is_tensor(g["lr"]):
            g["lr"].fill_(lr)  # a device tensor read by the captured step: no host sync, no re-capture
        else:
            g["lr"] = lr


COLLAPSE = 0.3  # catastrophic overfitting: train-batch PGD accuracy below 30% of its best so far (best >= 10%)


def collapse_verdict(rows):
    """Catastrophic overfitting (Wong et al. 2020): FGSM training can send PGD accuracy to ~0 while FGSM accuracy
    stays high. Judged on the per-epoch PGD accuracy of a fixed training batch (train_batch_pgd): the first
    epoch where it falls below COLLAPSE x its best so far, once that best is at least 10% (below, the 256-image
    monitor is noise). None, or a sentence saying where."""
    best, best_ep = -1.0, None
    for r in rows:
        v = r.get("train_batch_pgd")
        if v is None:
            continue
        if v > best:
            best, best_ep = v, r["epoch"]
        elif best >= 10 and v < COLLAPSE * best:
            return (f"train-batch PGD accuracy fell to {v:.1f}% at epoch {r['epoch']} from {best:.1f}% at epoch "
                    f"{best_ep} (last epoch {rows[-1]['train_batch_pgd']:.1f}%)")
    return None


def _fmt_time(s):
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def _args_diff(old, new):
    return ", ".join(f"--{k.replace('_', '-')} {old.get(k)} -> {v}" for k, v in new.items() if old.get(k) != v)


def _start(m, opt, lr, epochs, force):
    """Where member m starts: (first epoch, best so far, rows), from its resume state X.last.pt if there is one
    with the same arguments; None if its output is finished with these arguments (and newer than its init)."""
    out, last = m["out"], m["out"][:-3] + ".last.pt"
    init = m["info"].get("init")
    newer = lambda p: init and os.path.getmtime(init) > os.path.getmtime(p)  # noqa: E731 (its source retrained)
    if os.path.exists(out) and not force and not newer(out):
        diff = _args_diff(load_checkpoint(out, ours=True)["args"], m["args"])
        if diff:
            raise UsageError(f"{out} exists, trained with other arguments ({diff}); pass another --out, or --force "
                             f"to replace it")
        return None
    if force or not os.path.exists(last) or newer(last):
        return 0, {"score": -1.0}, []
    ck = load_checkpoint(last, "resume state", ours=True)
    if ck["args"] != m["args"]:
        raise UsageError(f"{last} is a run with other arguments ({_args_diff(ck['args'], m['args'])}); rerun with "
                         f"the same ones to resume it, or --force to start afresh")
    m["model"].load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    for g in opt.param_groups:  # load_state_dict takes fused/foreach from the checkpoint: keep this device's
        g.update(fused=opt.defaults["fused"], foreach=opt.defaults["foreach"])  # (CPU's foreach SGD breaks a capture)
    m["info"]["steps_ran"] = list(ck.get("steps_ran") or [])  # what ran before, kept; this process adds its own
    for g in opt.param_groups:
        g["lr"] = torch.tensor(lr, device=g["params"][0].device) if g["params"][0].is_cuda else lr
    return min(ck["epoch"], epochs), ck["best"], ck["rows"]


def fit(members, *, dataset, adv, epochs, lr, wd, milestones, batch_size, eps, steps, random_start=False,
        label_fix=True, data_dir="data", limit=None, device="auto", force=False, freeze_bn=False, capture="auto"):
    """Train a cohort with the mixed objective (adv) on `dataset`. Each member is a dict: model, params (what
    trains), out (X.pt), args (its recorded flags: the resume check) and info (what its checkpoint says of it:
    arch, num_classes, role, ...). Per member: the best-validation weights (clean accuracy for natural runs, the
    mean of clean and adversarial for adversarial ones, as the authors) in X.pt, X.json beside it, everything to
    resume in X.last.pt, a row per epoch in X.jsonl, its lines appended to X.log. A finished member (X.pt newer
    than its init) is skipped unless force. capture: auto, on or off (make_step). Returns the summaries of the
    members trained."""
    device = pick_device(device)
    cuda = device.startswith("cuda")
    if capture == "on" and not cuda:
        raise UsageError(f"--capture on needs CUDA (this run is on {device}); use --capture auto or off")
    for m in members:
        check_writable(m["out"])
        if m["info"]["num_classes"] != NUM_CLASSES[dataset]:
            raise UsageError(f"the model has {m['info']['num_classes']} classes but {dataset} has "
                             f"{NUM_CLASSES[dataset]}")
    (xtr, ytr), (xva, yva) = load_data(dataset, data_dir, limit)  # bad data is reported before anything is written
    xtr, ytr, xva, yva = (t.to(device) for t in (xtr, ytr, xva, yva))
    if not cuda and len(xtr) * epochs >= 1_000_000:  # e.g. the protocol's 47,500 images x 200 epochs
        print(f"warning: {len(xtr):,} images x {epochs} epochs on the CPU take days; for a try on the CPU: --arch "
              f"resnet8 --epochs 2 --limit 1000 --data-dir synthetic (README, 'One cell, ad hoc')", file=sys.stderr,
              flush=True)
    # A fixed training batch, attacked with PGD each epoch: FGSM training's catastrophic overfitting shows as
    # this accuracy collapsing while FGSM accuracy stays high (Wong et al. 2020).
    n_mon = min(256, len(xtr) // 8)
    # the validation attack, named in the logs: the training's own (FGSM with predicted labels under the fix)
    val_attack = "fgsm(pred. labels)" if adv == "fgsm" and label_fix else f"{adv}(true labels)"
    xmon, ymon = xtr[:n_mon], ytr[:n_mon]  # uint8, as accuracy() expects: it scales by 1/255 itself
    spent = [0.0]  # seconds of the epochs trained in this process, validation included: the time-left estimate

    def end_epoch(m, epoch, lr, dt, k, first):
        """Validate member m, keep its best weights, save its resume state and log its epoch."""
        loss, tr_clean, tr_adv = (m["tot"] / len(xtr) * torch.tensor([1.0, 100, 100], device=device)).tolist()
        net = m["model"]
        val_clean = accuracy(net, xva, yva)
        if adv == "fgsm" and label_fix:  # the attack the model trains on: FGSM crafted with its own predictions
            right = sum(int((predict(net, fgsm(net, xb, predict(net, xb), eps)) == yb).sum())
                        for xb, yb in batches(xva, yva, 500))
            val_adv = 100 * right / len(xva)
        else:
            val_adv = accuracy(net, xva, yva, kind=adv, eps=eps, steps=steps) if adv != "nat" else None
        mon_pgd = accuracy(net, xmon, ymon, kind="pgd", eps=eps, steps=steps) if adv != "nat" else None
        score = val_clean if val_adv is None else (val_clean + val_adv) / 2
        row = {"epoch": epoch + 1, "lr": lr, "loss": loss, "train_clean": tr_clean, "val_clean": val_clean,
               "seconds": dt, "images_per_s": len(xtr) / dt}
        if adv != "nat":
            row.update(train_adv=tr_adv, val_adv=val_adv, val_attack=val_attack, train_batch_pgd=mon_pgd)
        m["rows"].append(row)
        if score > m["best"]["score"]:
            m["best"] = {"score": score, "epoch": epoch + 1, "metrics": row,
                         "model": {n: v.detach().cpu().clone() for n, v in net.state_dict().items()}}
        _record(m, step, epoch, k, device)
        atomic_save({**m["info"], "args": m["args"], "epoch": epoch + 1, "model": net.state_dict(),
                     "optimizer": m["opt"].state_dict(), "best": m["best"], "rows": m["rows"]},
                    m["out"][:-3] + ".last.pt")
        log = m["out"][:-3] + ".jsonl"
        with open(log + ".tmp", "w") as f:  # rewritten whole each epoch: a resumed log has no duplicates
            f.writelines(json.dumps(r) + "\n" for r in m["rows"])
        os.replace(log + ".tmp", log)
        adv_txt = "" if adv == "nat" else f" adv {tr_adv:5.1f}%"
        vadv_txt = "" if adv == "nat" else f" {val_attack} {val_adv:5.1f}% | train-batch pgd {mon_pgd:5.1f}%"
        left = (epochs - epoch - 1) * (spent[0] + time.time() - t0) / (epoch + 1 - first)
        say(m, f"epoch {epoch + 1:3d}/{epochs} | loss {loss:.3f} | train clean {tr_clean:5.1f}%{adv_txt} | "
               f"val clean {val_clean:5.1f}%{vadv_txt} | lr {lr:.3g} | {len(xtr) / dt:,.0f} img/s"
               + (f" (x{k} models)" if k > 1 else "") + f" | {_fmt_time(dt)} | left {_fmt_time(left)}")

    with contextlib.ExitStack() as held:
        held.enter_context(capturing(capture))  # the training steps and the validation's attacks
        todo = []
        for m in members:
            held.enter_context(output_lock(m["out"]))  # every output ours alone for the whole run
            # channels_last: tensor cores on CUDA; on CPU oneDNN's NHWC kernels, 16-23% faster steps (BENCHMARKS.md)
            m["model"].to(device).to(memory_format=torch.channels_last)
            # on CUDA the lr is a device tensor: the captured optimiser step reads it at every replay
            m["opt"] = torch.optim.SGD(m["params"], lr=torch.tensor(lr, device=device) if cuda else lr, momentum=0.9,
                                       weight_decay=wd, fused=cuda or None)
            st = _start(m, m["opt"], lr, epochs, force)
            if st is None:
                print(f"[{_who([m])}] {m['out']} exists; nothing to do (--force retrains it)", flush=True)
                continue
            m["start"], m["best"], m["rows"] = st
            m["log"] = held.enter_context(open(m["out"][:-3] + ".log", "a" if m["start"] else "w"))  # resumed: append
            if m["start"]:
                say(m, f"resuming {m['out']} after epoch {m['start']}/{epochs}")
            n_par = sum(p.numel() for p in m["params"])
            say(m, f"{m['info']['arch']} on {dataset} ({len(xtr)} train / {len(xva)} val), {adv} training, "
                   f"{eps_str(eps)}, {n_par:,} of {sum(p.numel() for p in m['model'].parameters()):,} parameters "
                   f"train, device {device}" + (f", cohort of {len(members)}" if len(members) > 1 else ""))
            todo.append(m)
        step, n_step, first = None, 0, min((m["start"] for m in todo), default=epochs)
        for epoch in range(first, epochs):
            act = [m for m in todo if m["start"] <= epoch]
            if not act:  # every member diverged (or none starts yet)
                continue
            if len(act) != n_step:  # the first epoch, or a member resumed later than the others joins: a new graph
                step, n_step = make_step([m["model"] for m in act], [m["opt"] for m in act], adv, eps, steps,
                                         random_start, label_fix), len(act)
            t0, lr_e = time.time(), lr_at(epoch, lr, epochs, milestones)
            gens = []
            for m in act:
                set_train_mode(m["model"], freeze_bn)
                set_lr(m["opt"], lr_e)
                m["tot"] = torch.zeros(3, device=device)
                m["bad"] = torch.tensor(-1, device=device)  # the first step with a non-finite loss, kept on the device
                # every epoch reproducible on its own: shuffle, crops, flips and random starts; exact resume
                gens.append(torch.Generator(device).manual_seed(m["args"]["seed"] * 100003 + epoch))
            n_steps, t_shown = math.ceil(len(xtr) / batch_size), time.time()
            for i, bs in enumerate(zip(*(batches(xtr, ytr, batch_size, g, train=True) for g in gens))):
                for m, (loss, k, ka), (_, yb) in zip(act, step(bs, gens), bs):
                    m["tot"] += torch.stack([loss * len(yb), k.float(), ka.float()])
                    m["bad"] = torch.where((m["bad"] < 0) & ~loss.isfinite(), i + 1, m["bad"])
                if i == 0:
                    t1 = time.time()  # rates from here on: the first step also captures and warms up
                elif time.time() - t_shown >= PROGRESS_S and i + 1 < n_steps:
                    t_shown = time.time()
                    if all(_diverged(m, epoch, lr_e, None) for m in act):
                        break  # nothing left worth the rest of the epoch
                    rate = i * len(bs[0][1]) * len(act) / (t_shown - t1)
                    print(f"[{_who(act)}] epoch {epoch + 1}/{epochs} step {i + 1}/{n_steps} | {rate:,.0f} img/s | "
                          f"epoch left {_fmt_time((n_steps - i - 1) * (t_shown - t1) / i)}", flush=True)
            dt = time.time() - t0
            for m in act:
                if not _diverged(m, epoch, lr_e, n_steps):
                    end_epoch(m, epoch, lr_e, dt, len(act), first)
            todo = [m for m in todo if not m.get("diverged")]
            spent[0] += time.time() - t0
        done = [_finish(m, dataset, adv, eps, len(xtr), len(xva), device) for m in todo]
        lost = [m["diverged"] for m in members if m.get("diverged")]
        if lost:
            raise UsageError("; ".join(lost))
        return done


PROGRESS_S = 30  # a progress line inside an epoch at most this often


def _who(ms):
    """The name of a member, or of a cohort (its first member and how many more), for lines on stdout."""
    first = os.path.basename(ms[0]["out"])[:-3]
    return first + (f" +{len(ms) - 1} more" if len(ms) > 1 else "")


def _diverged(m, epoch, lr, n_steps):
    """True (and m['diverged'] says where) once member m's loss or, at the epoch's end (n_steps given), its weights
    are not finite. Its resume state stays that of the last good epoch, and no X.pt is written for it."""
    if m.get("diverged"):
        return True
    step = m["bad"].item()
    if step < 0 and n_steps is not None and not torch.stack([p.isfinite().all() for p in m["model"].state_dict()
                                                             .values() if p.is_floating_point()]).all():
        step = n_steps  # one sync for every weight and statistic, at the epoch's end
    if step < 0:
        return False
    kept = (f"{m['out'][:-3]}.last.pt keeps epoch {epoch}" if epoch else "nothing was kept")
    m["diverged"] = (f"{m['out']}: the training diverged (loss or weights not finite) at epoch {epoch + 1} step "
                     f"{step}, learning rate {lr:g}; {kept}. Try a lower --lr, and --force to start afresh")
    say(m, "stopped: " + m["diverged"])
    return True


def _record(m, step, epoch, k, device):
    """Member m's "steps_ran", saved with its checkpoints through info: one entry per process and cohort that
    trained it (its epochs, cohort size, captured or eager and why: steps_ran)."""
    runs = m["info"].setdefault("steps_ran", [])
    if m.get("step") is not step:  # this process's first epoch of m, or a member joined the cohort: another graph
        m["step"] = step
        runs.append({"epochs": [epoch + 1, epoch + 1]})
    runs[-1].update(epochs=[runs[-1]["epochs"][0], epoch + 1],
                    **steps_ran(device, step.ran["why"], {k: v for k, v in step.ran.items() if k != "why"}))


def say(m, line):
    """A member's line: printed with its name (several jobs of `make -j` share a terminal) and appended to X.log."""
    print(f"[{_who([m])}] {line}", flush=True)
    m["log"].write(line + "\n")
    m["log"].flush()


def _finish(m, dataset, adv, eps, n_train, n_val, device):
    """Write member m's final checkpoint (its best epoch) and summary."""
    rows, best = m["rows"], m["best"]
    info = {**m["info"], "dataset": dataset, "adv": adv, "args": m["args"], "n_train": n_train, "n_val": n_val,
            "collapse": collapse_verdict(rows)}
    summary = {**info, "eps": eps, "eps_paper_scale": 2 * eps, "best_epoch": best["epoch"],
               "best_val": best["metrics"], "last": rows[-1], "wall_s": sum(r["seconds"] for r in rows),
               **provenance(device)}
    atomic_save({**info, "epoch": best["epoch"], "metrics": best["metrics"], "rows": rows, "model": best["model"],
                 "provenance": provenance(device)}, m["out"])
    atomic_save(summary, m["out"][:-3] + ".json")
    say(m, f"wrote {m['out']} (best epoch {best['epoch']}, val score {best['score']:.1f}%)"
           + (f"; WARNING catastrophic overfitting: {info['collapse']}" if info["collapse"] else ""))
    m["log"].close()
    return summary

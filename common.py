"""The science of the reproduction of Davchev et al. 2019, "Towards Evaluating and Understanding Robust
Optimisation under Transfer" (arXiv 1905.02675): data, models, attacks, the mixed-loss training step, freezing
and loading checkpoints. What a researcher edits for an experiment lives here; the loop that runs it (cohorts,
captured steps, checkpoints, locks, progress) is engine.py's, which imports this file and never the reverse.

A library without side effects: nothing here touches a device, a file, the argument parser or a seed at import.
Every script passes its device in. Inputs are [0, 1] floats everywhere; the models map them to [-1, 1] (the
paper's range, Sec. 2.2) as their first operation, so eps = 8/256 here is 0.0625 on the paper's scale.
"""
import contextlib
import contextvars
import math
import os
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 8 / 256  # the paper's 0.0625 on [-1, 1] (Sec. 2.3), on the [0, 1] scale used here


class UsageError(Exception):
    """Bad input a person can fix: the scripts print the message on one line and exit with status 2."""


def binomial_se(acc, n):
    """Standard error (points) of an accuracy of acc % on n images, the test set's own noise. Agresti-Coull's (two
    successes and two failures added): 0 of 50 right is not a certain 0%, as the plain sqrt(p(1-p)/n) would say."""
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
    """(x uint8 N x 3 x 32 x 32, y int64) on the CPU, from data_dir: 'synthetic' (built in, offline), a folder of
    {name}_{train,test}.npz (x uint8 N x 32 x 32 x 3, y int64), or a torchvision root (downloaded when missing)."""
    if name not in NUM_CLASSES:
        raise UsageError(f"unknown dataset {name!r}; choose cifar10 or cifar100")
    k = NUM_CLASSES[name]
    if data_dir == "synthetic":
        return synthetic(name, train)
    npz = os.path.join(data_dir, f"{name}_{'train' if train else 'test'}.npz")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir {data_dir} is a file, not a folder; pass the folder holding "
                         f"{os.path.basename(npz)} (or a torchvision root), or --data-dir synthetic")
    if os.path.exists(npz):
        try:
            with np.load(npz) as f:
                x, y = f["x"], f["y"]
        except Exception as e:
            raise UsageError(f"{npz}: cannot read ({type(e).__name__}: {e}); it needs arrays x and y")
        _check_arrays(x, y, npz, k)
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y.astype(np.int64))
    if os.path.isdir(data_dir) and any(f.endswith(".npz") for f in os.listdir(data_dir)):
        raise UsageError(f"--data-dir {data_dir} holds .npz files but not {os.path.basename(npz)}; a folder of .npz "
                         f"files needs cifar10_train/test.npz and cifar100_train/test.npz")
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


def _input_grad(model, x, y, loss=None):
    """Gradient w.r.t. the input only of loss(logits, y), summed over the batch (default: cross-entropy); the
    input stays fp32 (autocast is inside)."""
    x = x.detach().requires_grad_(True)
    with autocast(x.device):
        out = model(x)
        loss = F.cross_entropy(out, y, reduction="sum") if loss is None else loss(out, y)
    return torch.autograd.grad(loss, x)[0]


def _check_budget(eps, alpha=None, steps=1):
    if not eps >= 0 or (alpha is not None and not alpha >= 0) or steps < 0:
        raise UsageError(f"attack budget must be non-negative (eps={eps}, alpha={alpha}, steps={steps})")


def fgsm(model, x, y, eps):
    """Goodfellow et al. 2015: x' = clip(x + eps * sign(grad_x CE(model(x), y)), 0, 1)."""
    _check_budget(eps)
    with frozen_eval(model):
        return (x + eps * _input_grad(model, x, y).sign()).clamp_(0, 1).detach()


def pgd(model, x, y, eps, alpha, steps, random_start=False, gen=None, loss=None):
    """Madry et al. 2018: steps of alpha * sign(grad), each projected onto the eps-ball around x and [0, 1].

    The paper: 7 steps, alpha = eps/4, no random start (the authors'). With random_start the walk begins at a
    uniform point of the eps-ball, drawn from gen (a torch.Generator on x's device; None: the global one).
    loss(logits, y): what the walk ascends, summed (default: cross-entropy).
    """
    _check_budget(eps, alpha, steps)
    with frozen_eval(model):
        xa = x.clone()
        if random_start:
            xa = (xa + torch.empty_like(x).uniform_(-eps, eps, generator=gen)).clamp_(0, 1)
        for _ in range(steps):
            xa = xa + alpha * _input_grad(model, xa, y, loss).sign()
            xa = torch.min(torch.max(xa, x - eps), x + eps).clamp_(0, 1)
        return xa.detach()


def cw_margin(z, y):
    """The Carlini-Wagner margin loss (Carlini & Wagner 2017), summed: max_{j != y} z_j - z_y, positive once wrong."""
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    return (other - z.gather(1, y[:, None])[:, 0]).sum()


def pgd_restarts(model, x, y, eps, alpha, steps, restarts):
    """Per-example worst case over `restarts` runs of PGD with random start: an example stays correct only if it
    survives every run (later runs attack only the survivors). Returns inputs that fool the model where any run did."""
    xa, alive = x.clone(), predict(model, x) == y
    for _ in range(restarts):
        idx = alive.nonzero().flatten()
        if len(idx) == 0:
            break
        xa[idx] = pgd(model, x[idx], y[idx], eps, alpha, steps, random_start=True)
        alive[idx] = predict(model, xa[idx]) == y[idx]
    return xa


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
# Evaluation columns (evaluate.py runs each, the report shows it, bench counts it). A white-box column's attack
# runs on the evaluated model; a black-box one's runs once on the DenseNet121 (evaluate.py --craft-from) and every
# CIFAR-10 model classifies its examples (a column bb_X stores them as x_X). Worst: right under every column run.

MASKING = ("rises-with-eps", "not-zero-at-max-eps", "pgd-above-fgsm", "strong-above-pgd", "bb-below-wb",
           "adv-above-clean")  # evaluate.sanity_flags' gradient-masking checks: they void the white-box columns
BB_VOID = ("bb-above-clean", "bb-source-at-chance")  # ... and these the black-box ones


class Column(NamedTuple):
    head: str
    box: str  # 'clean', 'wb' (the model's own gradients), 'bb' (examples crafted on the DenseNet) or 'worst'
    attack: object  # (model, x, y, eps, s) -> adversarial inputs, pure; s: dict of steps, strong_steps, restarts, seed
    cost: object  # s -> forward passes per image (an input-gradient backward ~1; bb: crafting): progress, bench
    voided_by: tuple  # the sanity flags that void its numbers (the report's claims)
    paper: bool  # one of Table 1's five; False: beyond the paper
    draws: bool = False  # draws random numbers: run eagerly, never captured
    switch: str = None  # evaluate.py's flag that runs it (--strong, --autoattack)


def _autoattack(model, x, y, eps, s):
    import torchattacks  # optional; evaluate.py --autoattack checks it is there before any work
    return torchattacks.AutoAttack(model.eval(), norm="Linf", eps=eps, version="standard",
                                   n_classes=model.linear.out_features, seed=s["seed"])(x, y)


COLUMNS = {
    "clean": Column("Clean", "clean", None, lambda s: 1, (), True),
    "bb_fgsm": Column("BB-FGSM", "bb", lambda m, x, y, eps, s: fgsm(m, x, y, eps), lambda s: 3, BB_VOID, True),
    "bb_pgd": Column("BB-PGD", "bb", lambda m, x, y, eps, s: pgd(m, x, y, eps, eps / 4, s["steps"]),
                     lambda s: 2 * s["steps"] + 1, BB_VOID, True),
    "wb_fgsm": Column("WB-FGSM", "wb", lambda m, x, y, eps, s: fgsm(m, x, y, eps), lambda s: 3, MASKING, True),
    "wb_pgd": Column("WB-PGD", "wb", lambda m, x, y, eps, s: pgd(m, x, y, eps, eps / 4, s["steps"]),
                     lambda s: 2 * s["steps"] + 1, MASKING + ("pgd-not-converged",), True),
    # Carlini et al. 2019: PGD with random start, 50 steps of 2.5 eps / steps, 10 restarts, the per-example worst
    "wb_strong": Column("WB-strong", "wb", lambda m, x, y, eps, s: pgd_restarts(
        m, x, y, eps, 2.5 * eps / s["strong_steps"], s["strong_steps"], s["restarts"]),
        lambda s: s["restarts"] * (2 * s["strong_steps"] + 1), MASKING, False, draws=True, switch="strong"),
    "wb_cw": Column("WB-CW", "wb", lambda m, x, y, eps, s: pgd(m, x, y, eps, eps / 4, 20, loss=cw_margin),
                    lambda s: 41, MASKING, False),
    "autoattack": Column("AutoAttack", "wb", _autoattack, lambda s: 100, MASKING, False, True, "autoattack"),
    "worst": Column("Worst", "worst", None, lambda s: 0, MASKING + BB_VOID + ("pgd-not-converged",), False),
}
PAPER_COLS = tuple(k for k, col in COLUMNS.items() if col.paper)  # Table 1's five, in its order


# ----------------------------------------------------------------------------------------------------------
# Training objectives. The paper's mixed objective (Sec. 2.3): B clean images and B adversarial images crafted from
# them with the current parameters; loss = (CE(clean) + CE(adv)) / 2, the halves forwarded separately in train mode
# (separate BatchNorm batch statistics, as the authors). Natural training is the clean half alone. An objective is
# a row of OBJECTIVES: how its step crafts, what it minimises, the attack that validates it, and whether its step
# draws random numbers (the engine then runs it eagerly: a CUDA graph would replay one draw forever).

class Objective(NamedTuple):
    craft: object  # (model, x, y, eps, steps, random_start, label_fix, gen) -> adversarial inputs or None; a pure
    # attack (eval mode, the model left as found); random numbers only from gen (the epoch's generator)
    loss: object  # (model, x, x_adv, y) -> (loss, clean logits, adversarial logits or None), in train mode
    validate: str  # the attack of its validation accuracy, by name ('fgsm', 'pgd'; None: clean accuracy only)
    draws: bool  # its step draws random numbers (beyond --random-start): the engine runs it eagerly
    about: str
    paper: bool  # one of the paper's (Table 1's rows, Figures 2-5, the claims); False: beyond the paper


def mixed_loss(model, x, x_adv, y):
    out = model(x)
    loss, out_adv = F.cross_entropy(out, y), None
    if x_adv is not None:
        out_adv = model(x_adv)
        loss = (loss + F.cross_entropy(out_adv, y)) / 2
    return loss, out, out_adv


def _fgsm_craft(model, x, y, eps, steps, random_start, label_fix, gen):
    """FGSM crafted with the model's own predictions (label-leaking fix, Kurakin et al. 2016) when label_fix."""
    return fgsm(model, x, predict(model, x) if label_fix else y, eps)


def _trades_craft(model, x, y, eps, steps, random_start, label_fix, gen):
    """TRADES' inner maximisation (Zhang et al. 2019): `steps` of eps/4 ascending KL(f(x) || f(x')) from
    x + 0.001 N(0, 1), each projected onto the eps-ball and [0, 1]."""
    with frozen_eval(model), torch.no_grad(), autocast(x.device):
        p = F.softmax(model(x).float(), 1)
    kl = lambda z, p: F.kl_div(F.log_softmax(z.float(), 1), p, reduction="sum")  # noqa: E731
    xa = x + 0.001 * torch.randn(x.shape, device=x.device, generator=gen)
    with frozen_eval(model):
        for _ in range(steps):
            xa = xa + eps / 4 * _input_grad(model, xa, p, kl).sign()
            xa = torch.min(torch.max(xa, x - eps), x + eps).clamp_(0, 1)
    return xa.detach()


def _trades_loss(model, x, x_adv, y, beta=6.0):
    """CE(clean) + beta KL(f(x) || f(x')), beta = 6 (Zhang et al.'s CIFAR-10 setting)."""
    out, out_adv = model(x), model(x_adv)
    kl = F.kl_div(F.log_softmax(out_adv.float(), 1), F.softmax(out.float(), 1), reduction="batchmean")
    return F.cross_entropy(out, y) + beta * kl, out, out_adv


OBJECTIVES = {
    "nat": Objective(lambda *a: None, mixed_loss, None, False, "natural training", True),
    "fgsm": Objective(_fgsm_craft, mixed_loss, "fgsm", False, "mixed clean + FGSM (label-leaking fix)", True),
    "pgd": Objective(lambda m, x, y, eps, steps, rs, lf, gen: pgd(m, x, y, eps, eps / 4, steps, rs, gen),
                     mixed_loss, "pgd", False, "mixed clean + PGD-7 of eps/4 (Madry et al.)", True),
    "trades": Objective(_trades_craft, _trades_loss, "pgd", True, "TRADES, beta 6 (Zhang et al. 2019)", False),
}
PAPER_ADV = tuple(k for k, o in OBJECTIVES.items() if o.paper)  # the paper's grid, Table 1's rows, Figures 2-5


def train_step(model, opt, x, y, adv="nat", eps=EPS, steps=7, random_start=False, label_fix=True, gen=None):
    """One optimiser step of objective adv; returns detached (loss, clean correct, adv correct) tensors: no host
    sync here. gen draws the objective's random numbers (PGD's random start)."""
    obj = OBJECTIVES[adv]
    x_adv = obj.craft(model, x, y, eps, steps, random_start, label_fix, gen)
    with autocast(x.device):
        loss, out, out_adv = obj.loss(model, x, x_adv, y)
        correct_adv = torch.zeros((), device=x.device, dtype=torch.long)
        if out_adv is not None:
            correct_adv = (out_adv.argmax(1) == y).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), (out.argmax(1) == y).sum(), correct_adv


# ----------------------------------------------------------------------------------------------------------
# Freezing: the paper's three transfer strategies (Sec. 2.1) as the authors' code implemented them, and the depths
# between them, all on one scale: bK = the last K of the residual blocks (counted from the output) plus the head,
# the stem counted last. On ResNet56 (27 blocks) the paper's three are points of it: 1 = b0 (the head), 12 = b9 (all
# of layer3, as the authors' code; the paper's "last block"), 56 = b28 (everything, the stem the 28th unit). Those
# three keep their paper labels and bK names only the depths between, so each depth has one name in flags,
# checkpoint names, recorded arguments and the report. README: the table K -> weight layers -> parameters.

UNFREEZE = {1: "the new head only", 12: "the last stage (layer3) and the head", 56: "every layer"}
PAPER_K = {1: 0, 12: 9, 56: 28}  # the paper's depths on ResNet56's scale of K
# every allowed depth, shallow to deep
DEPTHS = (1, *(f"b{k}" for k in range(1, 9)), 12, *(f"b{k}" for k in range(10, 28)), 56)
DEPTH_SWEEP = (1, "b1", "b3", "b6", 12, "b14", "b18", 56)  # `make depth`'s default DEPTHS: head to everything


class Strategy(NamedTuple):
    """A named transfer strategy beside the depths (beyond the paper): which modules train."""
    train: object  # model (the fresh 10-class head in place) -> the modules whose parameters train; the rest freeze
    about: str


STRATEGIES = {
    "bn": Strategy(lambda m: [m.linear, *(x for x in m.modules() if isinstance(x, nn.BatchNorm2d))],
                   "BatchNorm's affine parameters and the head"),
}
# The paper's three strategies: its grid, Table 1's rows, Figures 2-5
PAPER_UNF = tuple(UNFREEZE)


def parse_unfreeze(u):
    """A --unfreeze value as it is recorded: 1, 12, 56 (int), 'bK' (str, 1 <= K <= 27, K != 9) or a STRATEGIES name."""
    s = str(u)
    if s in ("1", "12", "56"):
        return int(s)
    if s in STRATEGIES:
        return s
    k = int(s[1:]) if s[:1] == "b" and s[1:].isdigit() else None
    paper = {v: p for p, v in PAPER_K.items()}.get(k)
    if paper is not None:
        raise UsageError(f"--unfreeze {s} is the paper's {paper}: {UNFREEZE[paper]}; write {paper}, so that one "
                         f"depth has one name")
    if k is None or not 1 <= k <= 27 or s != f"b{k}":
        raise UsageError(f"--unfreeze {s}: use 1, 12 or 56 (the paper's three strategies), bK, the last K of "
                         f"ResNet56's 27 residual blocks plus the head (K = 1..27 but 9, which is 12), e.g. b3, or a "
                         f"named strategy ({', '.join(STRATEGIES)})")
    return s


def depth_k(unfreeze, n_blocks=27):
    """A depth's place on the scale, in residual blocks unfrozen from the output: 1 -> 0, 12 -> the last stage's
    blocks (9 on ResNet56), 56 -> all blocks + 1 (the stem), bK -> K. n_blocks: the ResNet's (27 for ResNet56)."""
    u = parse_unfreeze(unfreeze)
    if u in STRATEGIES:
        raise UsageError(f"--unfreeze {u} is a named strategy ({STRATEGIES[u].about}), not a depth")
    return {1: 0, 12: n_blocks // 3, 56: n_blocks + 1}[u] if isinstance(u, int) else int(u[1:])


def describe_unfreeze(unfreeze):
    """What a depth or strategy trains, in words."""
    u = parse_unfreeze(unfreeze)
    return (UNFREEZE[u] if isinstance(u, int) else STRATEGIES[u].about if u in STRATEGIES else
            "the last residual block and the head" if u == "b1" else f"the last {u[1:]} residual blocks and the head")


def freeze(model, unfreeze):
    """Set requires_grad for a depth (parse_unfreeze): 1 (the head), 12 (layer3 + head: the authors' loop unfreezes
    all of layer3, which the paper calls 'the last block'), 56 (everything), bK (the last K residual blocks and
    the head) or a named strategy. Returns the trainable parameters for the optimiser."""
    blocks = [*model.layer1, *model.layer2, *model.layer3]  # forward order: the last K are blocks[len - K:]
    u = parse_unfreeze(unfreeze)
    k = None if u in STRATEGIES else depth_k(u, len(blocks))
    if isinstance(u, str) and k is not None and k > len(blocks):  # a smaller ResNet than ResNet56
        raise UsageError(f"--unfreeze {unfreeze}: this ResNet has {len(blocks)} residual blocks; use a bK with K <= "
                         f"{len(blocks)}, or 56 for everything")
    if isinstance(u, str) and k == len(blocks) // 3:  # as b9 on ResNet56: one depth, one name
        raise UsageError(f"--unfreeze {unfreeze} is this ResNet's 12 (its layer3 has {k} residual block"
                         f"{'s' * (k > 1)}): {UNFREEZE[12]}; write 12, so that one depth has one name")
    train = (STRATEGIES[u].train(model) if k is None else [model] if k == len(blocks) + 1
             else [model.linear, *blocks[len(blocks) - k:]])
    for p in model.parameters():
        p.requires_grad_(False)
    for m in train:
        for p in m.parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model, freeze_bn=False):
    """model.train(); with freeze_bn, BatchNorm layers whose parameters are frozen keep their running
    statistics (eval mode). The authors left them adapting to CIFAR-10, which is the default."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and not m.weight.requires_grad:
                m.eval()


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: plain self-describing dicts (the engine writes them atomically); a model rebuilt from one needs
# only this file.

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


if __name__ == "__main__":  # the names Make checks its variables against (`python common.py`)
    import common  # the module the scripts import, with whatever a wrapper registered in it
    print(*(f"adv:{k}" for k in common.OBJECTIVES), *(f"depth:{d}" for d in common.DEPTHS),
          *(f"strategy:{k}" for k in common.STRATEGIES))

"""Shared pieces of the reproduction of Davchev et al. 2019, "Towards Evaluating and Understanding Robust
Optimisation under Transfer" (arXiv 1905.02675): data, models, attacks, the mixed-loss training step,
freezing and checkpoints.

A library without side effects: nothing here touches a device, a file, the argument parser or a seed at import.
Every script passes its device in. Inputs are [0, 1] floats everywhere; the models map them to [-1, 1] (the
paper's range, Sec. 2.2) as their first operation, so eps = 8/256 here is 0.0625 on the paper's scale.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time

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


def run_main(main):
    """Run a script's main(): bad input becomes one line on stderr and exit status 2, never a traceback."""
    try:
        main()
    except UsageError as e:
        die(str(e))
    except KeyboardInterrupt:
        die("interrupted; run the same command again to resume from the last completed epoch")


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

def autocast(device):
    """bf16 autocast on CUDA (no grad scaler needed), a null context elsewhere (fp32 on CPU)."""
    dev = torch.device(device)
    return torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()


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


def pgd(model, x, y, eps, alpha, steps, random_start=False):
    """Madry et al. 2018: steps of alpha * sign(grad), each projected onto the eps-ball around x and [0, 1].

    The paper: 7 steps, alpha = eps/4, no random start (the authors'). With random_start the walk begins at a
    uniform point of the eps-ball.
    """
    _check_budget(eps, alpha, steps)
    with frozen_eval(model):
        xa = x.clone()
        if random_start:
            xa = (xa + torch.empty_like(x).uniform_(-eps, eps)).clamp_(0, 1)
        for _ in range(steps):
            xa = xa + alpha * _input_grad(model, xa, y).sign()
            xa = torch.min(torch.max(xa, x - eps), x + eps).clamp_(0, 1)
        return xa.detach()


def predict(model, x):
    """Labels the model predicts (eval mode, no gradients); used for FGSM's label-leaking fix."""
    with frozen_eval(model), torch.no_grad(), autocast(x.device):
        return model(x).argmax(1)


def attack(model, x, y, kind, eps, alpha=None, steps=7, random_start=False):
    """The paper's adversaries by name: 'fgsm' or 'pgd' (alpha defaults to eps/4 as in Madry et al.)."""
    if kind == "fgsm":
        return fgsm(model, x, y, eps)
    if kind == "pgd":
        return pgd(model, x, y, eps, eps / 4 if alpha is None else alpha, steps, random_start)
    raise UsageError(f"unknown attack {kind!r}; choose fgsm or pgd")


# ----------------------------------------------------------------------------------------------------------
# Training: the paper's mixed objective (Sec. 2.3). B clean images and B adversarial images crafted from them
# with the current parameters; loss = (CE(clean) + CE(adv)) / 2, the halves forwarded separately in train
# mode (separate BatchNorm batch statistics, as the authors). Natural training is the clean half alone.

def train_step(model, opt, x, y, adv="nat", eps=EPS, steps=7, random_start=False, label_fix=True):
    """One optimiser step; returns detached (loss, clean correct, adv correct) tensors: no host sync here.

    FGSM crafts with the model's own predictions (label-leaking fix, Kurakin et al. 2016) when label_fix;
    PGD crafts with the true labels (Madry et al.).
    """
    x_adv = None
    if adv != "nat":
        y_craft = predict(model, x) if adv == "fgsm" and label_fix else y
        x_adv = attack(model, x, y_craft, adv, eps, steps=steps, random_start=random_start)
    with autocast(x.device):
        out = model(x)
        loss = F.cross_entropy(out, y)
        correct_adv = torch.zeros((), device=x.device)
        if x_adv is not None:
            out_adv = model(x_adv)
            loss = (loss + F.cross_entropy(out_adv, y)) / 2
            correct_adv = (out_adv.argmax(1) == y).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), (out.argmax(1) == y).sum(), correct_adv


def accuracy(model, x, y, batch_size=500, kind=None, eps=EPS, steps=7, random_start=False, alpha=None):
    """Accuracy (%) on device-resident uint8 data, clean or under a white-box attack with the true labels."""
    correct = torch.zeros((), device=x.device)
    for xb, yb in batches(x, y, batch_size):
        if kind:
            xb = attack(model, xb, yb, kind, eps, alpha, steps, random_start)
        correct += (predict(model, xb) == yb).sum()
    return 100 * correct.item() / max(1, len(x))


# ----------------------------------------------------------------------------------------------------------
# Freezing: the paper's three transfer strategies (Sec. 2.1) as the authors' code implemented them.

UNFREEZE = {1: "the new head only", 12: "the last stage (layer3) and the head", 56: "every layer"}


def freeze(model, unfreeze):
    """Set requires_grad for 1 (head), 12 (layer3 + head: the authors' loop unfreezes all of layer3, which the
    paper calls 'the last block') or 56 (everything). Returns the trainable parameters for the optimiser."""
    if unfreeze not in UNFREEZE:
        raise UsageError(f"--unfreeze must be 1, 12 or 56 (the paper's three strategies), got {unfreeze}")
    train = {1: (model.linear,), 12: (model.layer3, model.linear), 56: (model,)}[unfreeze]
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
# Checkpoints: plain self-describing dicts, written atomically (name.tmp, then os.replace).

def atomic_save(obj, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    if isinstance(obj, (dict, list)) and path.endswith(".json"):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, what="checkpoint"):
    if not os.path.exists(path):
        raise UsageError(f"{what} {path} does not exist; train it first (see `make help`) or fix the path")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UsageError(f"{what} {path} is unreadable ({type(e).__name__}); delete it and rerun its stage")
    if not isinstance(ck, dict) or "model" not in ck or "arch" not in ck:
        raise UsageError(f"{what} {path} is not a checkpoint of this project; pass one written by its scripts")
    return ck


def model_from_checkpoint(ck, device="cpu"):
    model = build_model(ck["arch"], ck["num_classes"], ck.get("growth", 12))
    model.load_state_dict(ck["model"])
    return model.to(device)


def provenance(device):
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"torch": torch.__version__, "device": name, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for but CUDA is not available; use --device cpu")
    return name


# ----------------------------------------------------------------------------------------------------------
# The training run shared by the three training scripts: epochs, validation, best/last checkpoints, resume,
# progress. Each script builds its model and trainable parameters and hands them here.

def add_training_args(p, epochs, wd, milestones, out):
    """The flags every training script takes; defaults are the authors' schedule for that stage."""
    p.add_argument("--out", default=out, help="final (best-validation) checkpoint; X.last.pt, X.json, X.jsonl beside it")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the model (CUDA; compiles the attack's forward/backward too)")
    return p


def check_training_args(a):
    if a.epochs < 1 or a.batch_size < 1 or (a.limit is not None and a.limit < 20):
        raise UsageError("--epochs and --batch-size must be positive and --limit at least 20")
    if a.eps < 0 or a.steps < 1 or a.lr <= 0 or a.wd < 0:
        raise UsageError(f"--eps and --wd must be non-negative, --steps and --lr positive "
                         f"(got eps={a.eps}, steps={a.steps}, lr={a.lr}, wd={a.wd})")
    if not a.out.endswith(".pt"):
        raise UsageError(f"--out must name a .pt file, got {a.out!r}")


def _fmt_time(s):
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def fit(model, params, a, dataset, describe):
    """Train `params` of `model` with the mixed objective for a.adv on `dataset`; keep the best-validation
    weights (clean accuracy for natural runs, mean of clean and adversarial for adversarial ones, as the
    authors) in a.out and everything needed to resume in X.last.pt. describe: dict stored in the checkpoint
    (arch, num_classes, ...)."""
    device = pick_device(a.device)
    eps = a.eps / 256
    base = a.out[:-3]
    last_path, log_path = base + ".last.pt", base + ".jsonl"
    (xtr, ytr), (xva, yva) = load_data(dataset, a.data_dir, a.limit)
    if describe["num_classes"] != NUM_CLASSES[dataset]:
        raise UsageError(f"the model has {describe['num_classes']} classes but {dataset} has {NUM_CLASSES[dataset]}")
    xtr, ytr, xva, yva = (t.to(device) for t in (xtr, ytr, xva, yva))
    # channels_last: tensor cores on CUDA; on CPU oneDNN's NHWC kernels, 16-23% faster steps (BENCHMARKS.md)
    model.to(device).to(memory_format=torch.channels_last)
    net = torch.compile(model) if a.compile else model
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=a.wd,
                          fused=device.startswith("cuda") or None)
    # at least epoch 1: a milestone rounded to 0 would cut the lr before any training (e.g. --epochs 1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, round(f * a.epochs)) for f in a.milestones], 0.1)
    args = {k: v for k, v in vars(a).items() if k not in ("device", "compile")}
    start, best, rows = 0, {"score": -1.0}, []
    if os.path.exists(last_path):
        ck = load_checkpoint(last_path, "resume state")
        if ck["args"] != args:
            diff = ", ".join(f"--{k.replace('_', '-')} {ck['args'].get(k)} -> {v}" for k, v in args.items()
                             if ck["args"].get(k) != v)
            raise UsageError(f"{last_path} is a run with other arguments ({diff}); rerun with the same ones to "
                             f"resume it, or delete it to start afresh")
        if ck["epoch"] < a.epochs:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            start, best, rows = ck["epoch"], ck["best"], ck["rows"]
            print(f"resuming {a.out} after epoch {start}/{a.epochs}")
        else:
            print(f"{last_path} is a finished run; training afresh")
    print(f"{describe['arch']} on {dataset} ({len(xtr)} train / {len(xva)} val), {a.adv} training, {eps_str(eps)}, "
          f"{sum(p.numel() for p in params):,} of {sum(p.numel() for p in model.parameters()):,} parameters "
          f"train, device {device}", flush=True)
    # A fixed training batch, attacked with PGD each epoch: FGSM training's catastrophic overfitting shows as
    # this accuracy collapsing while FGSM accuracy stays high (Wong et al. 2020).
    n_mon = min(256, len(xtr) // 8)
    xmon, ymon = xtr[:n_mon], ytr[:n_mon]  # uint8, as accuracy() expects: it scales by 1/255 itself
    t_start = time.time()
    for epoch in range(start, a.epochs):
        t0 = time.time()
        torch.manual_seed(a.seed * 100003 + epoch)  # every epoch reproducible on its own: exact resume
        gen = torch.Generator(device).manual_seed(a.seed * 100003 + epoch)
        set_train_mode(net, getattr(a, "freeze_bn", False))
        lr = opt.param_groups[0]["lr"]
        tot = torch.zeros(3, device=device)
        for xb, yb in batches(xtr, ytr, a.batch_size, gen, train=True):
            loss, c, ca = train_step(net, opt, xb, yb, a.adv, eps, a.steps, a.random_start, a.label_fix)
            tot += torch.stack([loss * len(yb), c.float(), ca.float()])
        sched.step()
        loss, tr_clean, tr_adv = (tot / len(xtr) * torch.tensor([1.0, 100, 100], device=device)).tolist()
        val_clean = accuracy(net, xva, yva)
        val_adv = accuracy(net, xva, yva, kind=a.adv, eps=eps, steps=a.steps) if a.adv != "nat" else None
        mon_pgd = accuracy(net, xmon, ymon, kind="pgd", eps=eps, steps=a.steps) if a.adv != "nat" else None
        score = val_clean if val_adv is None else (val_clean + val_adv) / 2
        dt = time.time() - t0
        row = {"epoch": epoch + 1, "lr": lr, "loss": loss, "train_clean": tr_clean, "val_clean": val_clean,
               "seconds": dt, "images_per_s": len(xtr) / dt}
        if a.adv != "nat":
            row.update(train_adv=tr_adv, val_adv=val_adv, train_batch_pgd=mon_pgd)
        rows.append(row)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch + 1, "metrics": row,
                    "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        atomic_save({**describe, "args": args, "epoch": epoch + 1, "model": model.state_dict(),
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best": best, "rows": rows},
                    last_path)
        with open(log_path + ".tmp", "w") as f:  # rewritten whole each epoch: a resumed log has no duplicates
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(log_path + ".tmp", log_path)
        adv_txt = "" if a.adv == "nat" else f" adv {tr_adv:5.1f}%"
        vadv_txt = "" if a.adv == "nat" else f" {a.adv} {val_adv:5.1f}% | train-batch pgd {mon_pgd:5.1f}%"
        left = (a.epochs - epoch - 1) * (time.time() - t_start) / (epoch + 1 - start)
        print(f"epoch {epoch + 1:3d}/{a.epochs} | loss {loss:.3f} | train clean {tr_clean:5.1f}%{adv_txt} | "
              f"val clean {val_clean:5.1f}%{vadv_txt} | lr {lr:.3g} | {len(xtr) / dt:,.0f} img/s | "
              f"{_fmt_time(dt)} | left {_fmt_time(left)}", flush=True)
    summary = {**describe, "dataset": dataset, "adv": a.adv, "eps": eps, "eps_paper_scale": 2 * eps,
               "best_epoch": best["epoch"], "best_val": best["metrics"], "last": rows[-1], "args": args,
               "wall_s": sum(r["seconds"] for r in rows), **provenance(device)}
    atomic_save({**describe, "dataset": dataset, "args": args, "epoch": best["epoch"], "metrics": best["metrics"],
                 "model": best["model"], "provenance": provenance(device)}, a.out)
    atomic_save(summary, base + ".json")
    print(f"wrote {a.out} (best epoch {best['epoch']}, val score {best['score']:.1f}%)")
    return summary

"""Unit tests of common.py: the numbers the protocol fixes (parameter counts, layer counts, eps, the [-1, 1]
mapping), the attacks against analytic answers, freezing, the mixed loss, the label-leaking fix and the data.
All on the CPU in a few seconds."""
import copy
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common as c
import engine

EPS = 8 / 256


def images(n, seed=0, extremes=True):
    """n random [0, 1] images; with extremes some pixels sit exactly at 0 and 1, so clipping matters."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    if extremes:
        x[:, 0, :4] = 0.0
        x[:, 1, :4] = 1.0
    return x


def resnet8(num_classes=10, seed=0):
    torch.manual_seed(seed)
    return c.build_model("resnet8", num_classes)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# Models

@pytest.mark.parametrize("classes, count", [(10, 853_018), (100, 858_868)])
def test_resnet56_parameter_count_and_depth(classes, count):
    m = c.build_model("resnet56", classes)
    assert n_params(m) == count
    layers = c.weight_layers(m)
    assert len(layers) == 56
    assert layers[0] is m.conv1 and layers[-1] is m.linear  # forward order: stem first, head last
    assert sum(isinstance(l, nn.Conv2d) for l in layers) == 55
    assert all(len(s) == 9 for s in (m.layer1, m.layer2, m.layer3))


def test_densenet121_parameter_count_and_depth():
    m = c.build_model("densenet121", 10)
    assert n_params(m) == 1_000_618
    assert len(c.weight_layers(m)) == 121
    assert n_params(c.build_model("densenet121", 10, growth=32)) == 6_956_298


def test_unknown_architecture_is_a_usage_error():
    for arch in ("resnet57", "vgg16", "resnet"):
        with pytest.raises(c.UsageError):
            c.build_model(arch, 10)


@pytest.mark.parametrize("arch", ["resnet8", "densenet121"])
def test_first_operation_maps_unit_interval_to_minus_one_one(arch):
    m = c.build_model(arch, 10).eval()
    seen = []
    m.conv1.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    x = images(2)
    m(x)
    assert len(seen) == 1
    assert torch.equal(seen[0], x * 2 - 1)
    assert seen[0].min() == -1 and seen[0].max() == 1


# ----------------------------------------------------------------------------------------------------------
# Freezing

EXPECTED_TRAINABLE = {1: lambda n: n.startswith("linear."),
                      12: lambda n: n.startswith(("layer3.", "linear.")),
                      56: lambda n: True}


@pytest.mark.parametrize("unfreeze", [1, 12, 56])
def test_freeze_sets_exactly_the_paper_strategies(unfreeze):
    m = c.build_model("resnet56", 10)
    params = c.freeze(m, unfreeze)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in m.named_parameters() if EXPECTED_TRAINABLE[unfreeze](n)}
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert len(params) == len(trainable) and all(a is b for a, b in zip(params, trainable))
    frac = sum(p.numel() for p in params) / n_params(m)
    assert {1: abs(frac - 650 / 853_018) < 1e-9, 12: 0.75 < frac < 0.77, 56: frac == 1}[unfreeze], frac


def test_freeze_refreezes_a_previously_unfrozen_model():
    m = c.build_model("resnet8", 10)
    c.freeze(m, 56)
    c.freeze(m, 1)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {"linear.weight", "linear.bias"}


@pytest.mark.parametrize("bad", [0, 7, 11, 55])
def test_freeze_rejects_other_counts(bad):
    with pytest.raises(c.UsageError, match="1, 12 or 56"):
        c.freeze(c.build_model("resnet8", 10), bad)


@pytest.mark.parametrize("unfreeze", [1, 12, 56])
def test_train_step_moves_only_trainable_weights(unfreeze):
    m = c.build_model("resnet56", 10)
    params = c.freeze(m, unfreeze)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-5)
    c.set_train_mode(m)
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    c.train_step(m, opt, x, y, "nat")
    for n, p in m.named_parameters():
        if EXPECTED_TRAINABLE[unfreeze](n):
            assert not torch.equal(p, before[n]), f"{n} should have trained"
        else:
            assert torch.equal(p, before[n]), f"{n} is frozen but changed"


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_frozen_batchnorm_statistics(freeze_bn):
    m = resnet8()
    params = c.freeze(m, 12)
    buffers = {n: b.clone() for n, b in m.named_buffers()}
    opt = torch.optim.SGD(params, lr=0.1)
    c.set_train_mode(m, freeze_bn=freeze_bn)
    assert m.training
    c.train_step(m, opt, images(8), torch.arange(8) % 10, "nat")
    for n, b in m.named_buffers():
        if n.startswith("layer3."):  # trainable layers' statistics always adapt
            assert not torch.equal(b, buffers[n]), n
        elif freeze_bn:
            assert torch.equal(b, buffers[n]), f"{n} changed although --freeze-bn"
        else:  # the authors' behaviour: frozen layers' statistics keep adapting
            assert not torch.equal(b, buffers[n]), f"{n} did not adapt"


# ----------------------------------------------------------------------------------------------------------
# Attacks

def linear_model(seed=0):
    """Flatten + Linear(3072, 2), small weights so the softmax never saturates to exactly 0 or 1."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    with torch.no_grad():
        m[1].weight.mul_(0.01)
    return m


def test_fgsm_on_a_linear_model_matches_the_analytic_answer():
    # For 2-class CE on logits W x + b, d loss / dx = p_wrong * (w_wrong - w_true): its sign is known exactly.
    m = linear_model()
    x = images(4)
    y = torch.tensor([0, 1, 1, 0])
    w = m[1].weight.detach()
    wdiff = w[1 - y] - w[y]  # one row per image
    assert (wdiff != 0).all()
    expected = (x + EPS * wdiff.sign().view(4, 3, 32, 32)).clamp(0, 1)
    got = c.fgsm(m, x, y, EPS)
    assert torch.equal(got, expected)
    assert not got.requires_grad and got.dtype == x.dtype
    # ... and it is the true label that decides the direction: flipping it flips every unclipped step.
    flipped = c.fgsm(m, x, 1 - y, EPS)
    inside = (x > EPS) & (x < 1 - EPS)
    assert torch.equal((flipped - x)[inside].sign(), -(got - x)[inside].sign())


def check_in_ball(x, xa, eps):
    assert xa.shape == x.shape and xa.dtype == x.dtype
    assert xa.min() >= 0 and xa.max() <= 1
    assert (xa - x).abs().max() <= eps + 1e-6


@pytest.mark.parametrize("kind, kw", [("fgsm", {}), ("pgd", {}), ("pgd", {"random_start": True})])
def test_attacks_stay_in_the_eps_ball_and_pixel_range_and_raise_the_loss(kind, kw):
    m = resnet8()
    x, y = images(8), torch.arange(8) % 10
    torch.manual_seed(1)
    xa = c.attack(m, x, y, kind, EPS, steps=3, **kw)
    check_in_ball(x, xa, EPS)
    assert (xa - x).abs().max() > EPS / 2  # it actually moved
    m.eval()
    with torch.no_grad():
        assert F.cross_entropy(m(xa), y) > F.cross_entropy(m(x), y)


def test_attack_with_large_eps_still_respects_pixel_range():
    m = resnet8()
    x, y = images(4), torch.arange(4)
    for kind in ("fgsm", "pgd"):
        xa = c.attack(m, x, y, kind, 0.5, steps=3, random_start=True)
        check_in_ball(x, xa, 0.5)


def test_pgd_random_start_is_random_and_default_is_not():
    m = resnet8()
    x, y = images(4), torch.arange(4)
    a1 = c.pgd(m, x, y, EPS, EPS / 4, 2)
    a2 = c.pgd(m, x, y, EPS, EPS / 4, 2)
    assert torch.equal(a1, a2)
    r1 = c.pgd(m, x, y, EPS, EPS / 4, 2, random_start=True)
    r2 = c.pgd(m, x, y, EPS, EPS / 4, 2, random_start=True)
    assert not torch.equal(r1, r2) and not torch.equal(r1, a1)


def test_pgd_one_full_step_is_fgsm():
    m = resnet8()
    x, y = images(8), torch.arange(8) % 10
    assert torch.equal(c.pgd(m, x, y, EPS, EPS, 1, random_start=False), c.fgsm(m, x, y, EPS))


def test_pgd_default_step_size_is_eps_over_4():
    m = resnet8()
    x, y = images(4), torch.arange(4)
    assert torch.equal(c.attack(m, x, y, "pgd", EPS, steps=2), c.pgd(m, x, y, EPS, EPS / 4, 2))
    # one step of eps/4 from a point away from the pixel bounds moves every pixel by at most eps/4
    xa = c.attack(m, x, y, "pgd", EPS, steps=1)
    assert (xa - x).abs().max() <= EPS / 4 + 1e-6


def test_attacks_reject_negative_budgets_and_unknown_kinds():
    m, x, y = linear_model(), images(2), torch.tensor([0, 1])
    with pytest.raises(c.UsageError):
        c.fgsm(m, x, y, -0.1)
    with pytest.raises(c.UsageError):
        c.pgd(m, x, y, EPS, -0.1, 3)
    with pytest.raises(c.UsageError):
        c.attack(m, x, y, "cw", EPS)


@pytest.mark.parametrize("kind", ["fgsm", "pgd"])
@pytest.mark.parametrize("train", [True, False])
def test_attacks_leave_the_model_as_found(kind, train):
    m = resnet8()
    c.freeze(m, 12)  # a mix of requires_grad flags
    m.train(train)
    m.layer2[0].bn1.train(not train)  # a per-module mode that differs from the model's
    # some parameters with an existing gradient, others with none
    F.cross_entropy(m(images(2, seed=3)), torch.tensor([1, 2])).backward()
    m.linear.bias.grad = None
    modes = {n: mod.training for n, mod in m.named_modules()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in m.named_parameters()}
    assert any(g is None for g in grads.values()) and any(g is not None for g in grads.values())
    state = {n: t.clone() for n, t in m.state_dict().items()}
    c.attack(m, images(4), torch.arange(4), kind, EPS, steps=2)
    c.predict(m, images(4))
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    for n, p in m.named_parameters():
        if grads[n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, grads[n]), n
    for n, t in m.state_dict().items():  # eval mode: BatchNorm running statistics untouched
        assert torch.equal(t, state[n]), n


def test_attacks_restore_the_model_after_an_exception():
    m = resnet8().train()
    with pytest.raises(Exception):
        c.fgsm(m, images(2), torch.tensor([0, 99]), EPS)  # label out of range fails inside the attack
    assert m.training and all(mod.training for mod in m.modules())
    assert all(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize("kind", ["fgsm", "pgd"])
def test_attacks_use_running_statistics(kind):
    """Crafted in eval mode: the same example whether the model is handed over in train or eval mode."""
    m = resnet8()
    x, y = images(6), torch.arange(6)
    torch.manual_seed(0)
    for mod in m.modules():  # running statistics far from any batch's, so train-mode crafting would differ
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.2, 3)
    in_train = c.attack(m.train(), x, y, kind, EPS, steps=2)
    in_eval = c.attack(m.eval(), x, y, kind, EPS, steps=2)
    assert torch.equal(in_train, in_eval)
    # the check can fail: crafting with batch statistics gives another example
    m.train()
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(m(xg), y, reduction="sum").backward()
    assert not torch.equal((x + EPS * xg.grad.sign()).clamp(0, 1), c.fgsm(m, x, y, EPS))


# ----------------------------------------------------------------------------------------------------------
# Training step

def record_labels(monkeypatch, name):
    calls = []
    real = getattr(c, name)

    def wrapped(model, x, y, *args, **kw):
        calls.append(y.clone())
        return real(model, x, y, *args, **kw)

    monkeypatch.setattr(c, name, wrapped)
    return calls


@pytest.mark.parametrize("adv, label_fix, crafted_with", [("fgsm", True, "predictions"),
                                                          ("fgsm", False, "labels"),
                                                          ("pgd", True, "labels")])
def test_label_leaking_fix(monkeypatch, adv, label_fix, crafted_with):
    m = resnet8()
    x = images(16)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(5))
    m.eval()
    with torch.no_grad():
        preds = m(x).argmax(1)
    assert not torch.equal(preds, y)  # otherwise the test could not tell the two apart
    calls = record_labels(monkeypatch, adv)
    c.set_train_mode(m)
    c.train_step(m, torch.optim.SGD(m.parameters(), lr=0.1), x, y, adv, EPS, steps=1, label_fix=label_fix)
    assert len(calls) == 1
    assert torch.equal(calls[0], preds if crafted_with == "predictions" else y)


@pytest.mark.parametrize("adv", ["nat", "fgsm", "pgd"])
def test_mixed_loss_is_the_mean_of_clean_and_adversarial_cross_entropy(adv):
    m = resnet8()
    x, y = images(8), torch.arange(8) % 10
    ref = copy.deepcopy(m)
    # by hand, with the same parameters: craft in eval mode, then both halves forwarded separately in train mode
    if adv == "nat":
        x_adv = None
    else:
        y_craft = c.predict(ref, x) if adv == "fgsm" else y
        x_adv = c.attack(ref, x, y_craft, adv, EPS, steps=2)
    ref.train()
    with torch.no_grad():
        out = ref(x)
        clean = F.cross_entropy(out, y)
        expected = clean if x_adv is None else (clean + F.cross_entropy(ref(x_adv), y)) / 2
        expected_adv_correct = 0 if x_adv is None else (ref(x_adv).argmax(1) == y).sum()
    m.train()
    loss, correct, correct_adv = c.train_step(m, torch.optim.SGD(m.parameters(), lr=0.0), x, y, adv, EPS, steps=2)
    torch.testing.assert_close(loss, expected)
    assert correct == (out.argmax(1) == y).sum()
    assert correct_adv == expected_adv_correct
    if adv != "nat":
        assert abs(loss - clean) > 1e-4  # the adversarial half really enters the loss
    assert not loss.requires_grad


def test_train_step_adversarial_half_uses_its_own_batch_statistics():
    """The clean and adversarial halves are forwarded separately, not as one batch of 2B (protocol)."""
    m = resnet8()
    x, y = images(8), torch.arange(8) % 10
    ref = copy.deepcopy(m)
    x_adv = c.attack(ref, x, y, "pgd", EPS, steps=1)
    ref.train()
    with torch.no_grad():
        joint = F.cross_entropy(ref(torch.cat([x, x_adv])), torch.cat([y, y]))
    loss, _, _ = c.train_step(m.train(), torch.optim.SGD(m.parameters(), lr=0.0), x, y, "pgd", EPS, steps=1)
    assert abs(loss - joint) > 1e-6


# ----------------------------------------------------------------------------------------------------------
# Data

def test_synthetic_is_deterministic_in_range_and_balanced():
    x, y = c.synthetic("cifar10", True)
    x2, y2 = c.synthetic("cifar10", True)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (5000, 3, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and y.min() == 0 and y.max() == 9
    assert torch.equal(torch.bincount(y), torch.full((10,), 500))
    xt, yt = c.synthetic("cifar10", False)
    assert xt.shape == (1000, 3, 32, 32) and not torch.equal(xt[:10], x[:10])
    x100, y100 = c.synthetic("cifar100", True, n=300)
    assert len(x100) == 300 and y100.max() == 99
    # the classes are distinguishable: class means differ by much more than the noise of a mean
    means = torch.stack([x[y == k].float().mean(0) for k in range(10)])
    assert (means[0] - means[1]).abs().mean() > 5


def test_load_data_split_sizes_and_determinism():
    (xtr, ytr), (xva, yva) = c.load_data("cifar10", "synthetic")
    assert (len(xtr), len(xva)) == (4750, 250)
    (xtr2, _), (xva2, _) = c.load_data("cifar10", "synthetic")
    assert torch.equal(xtr, xtr2) and torch.equal(xva, xva2)
    (xtr, _), (xva, _) = c.load_data("cifar10", "synthetic", limit=100)
    assert (len(xtr), len(xva)) == (95, 5)
    assert round(0.05 * 50_000) == 2_500  # the authors' 47,500 / 2,500 on the real data


def write_npz(directory, name, x, y):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.npz"
    np.savez(path, x=x, y=y)
    return path


def indexed_images(n):
    """uint8 N x 32 x 32 x 3 images whose first two pixels encode their index."""
    x = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    x[:, 0, 1, 0] = np.arange(n) // 256
    return x


def ids(x):
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


def test_npz_loading_layout_and_disjoint_split(tmp_path):
    x = indexed_images(400)
    y = (np.arange(400) % 10).astype(np.int64)
    write_npz(tmp_path, "cifar10_train", x, y)
    xs, ys = c.load_split("cifar10", str(tmp_path), train=True)
    assert xs.shape == (400, 3, 32, 32) and xs.dtype == torch.uint8 and ys.dtype == torch.int64
    assert torch.equal(xs, torch.from_numpy(x).permute(0, 3, 1, 2))  # NHWC file -> NCHW tensor
    (xtr, ytr), (xva, yva) = c.load_data("cifar10", str(tmp_path))
    assert (len(xtr), len(xva)) == (380, 20)
    tr, va = ids(xtr), ids(xva)
    assert len(set(tr)) == 380 and len(set(va)) == 20
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(400))
    assert all(int(yy) == i % 10 for i, yy in zip(tr + va, torch.cat([ytr, yva])))  # labels travel with images
    assert va != sorted(va) or tr != sorted(tr)  # shuffled, not the first or last 5%


@pytest.mark.parametrize("case", ["shape", "dtype", "labels_high", "labels_negative", "label_count",
                                  "missing_array", "garbage"])
def test_bad_npz_is_a_usage_error_naming_the_file(tmp_path, case):
    x = np.zeros((20, 32, 32, 3), np.uint8)
    y = np.arange(20) % 10
    if case == "shape":
        x = np.zeros((20, 3, 32, 32), np.uint8)
    elif case == "dtype":
        x = x.astype(np.float32)
    elif case == "labels_high":
        y = np.arange(20)
    elif case == "labels_negative":
        y = y - 1
    elif case == "label_count":
        y = y[:10]
    if case == "missing_array":
        tmp_path.mkdir(exist_ok=True)
        path = tmp_path / "cifar10_train.npz"
        np.savez(path, images=x, y=y)
    elif case == "garbage":
        path = tmp_path / "cifar10_train.npz"
        path.write_bytes(b"\x00not a zip file at all" * 10)
    else:
        path = write_npz(tmp_path, "cifar10_train", x, y)
    with pytest.raises(c.UsageError) as e:
        c.load_split("cifar10", str(tmp_path), train=True)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_full_disk_keeps_the_last_good_file_and_leaves_no_tmp(tmp_path, capsys):
    """atomic_save's temporary file on a full disk (/dev/full: every write fails with ENOSPC): one line, the old
    file intact, no .tmp left; a full disk anywhere else is one line from run_main too."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs Linux's /dev/full")
    out = tmp_path / "x.json"
    engine.atomic_save({"good": 1}, str(out))
    os.symlink("/dev/full", str(out) + ".tmp")
    with pytest.raises(c.UsageError) as e:
        engine.atomic_save({"good": 2, "pad": "x" * 100_000}, str(out))
    msg = str(e.value)
    assert "\n" not in msg and str(out) in msg and "No space left on device" in msg and "free some space" in msg
    assert json.loads(out.read_text()) == {"good": 1} and os.listdir(tmp_path) == ["x.json"]

    def log_line():
        with open("/dev/full", "w") as f:
            f.write("x" * 100_000)
    with pytest.raises(SystemExit) as e:
        engine.run_main(log_line)
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and len(err) == 1 and "No space left on device" in err[0] and "free some" in err[0]


@pytest.mark.parametrize("folder", ["a file", "npz files but not this one"])
def test_data_dir_names_the_real_cause(tmp_path, folder):
    """Not "could not be downloaded ... connect to the internet" when the folder is a file, or a folder of .npz files
    lacks the one asked for."""
    if folder == "a file":
        d = tmp_path / "data.npz"
        d.write_bytes(b"not a folder")
        want = "is a file, not a folder"
    else:
        d = tmp_path
        x, y = c.synthetic("cifar10", False, n=20)
        for n in ("cifar10_train", "cifar10_test", "cifar100_train"):
            write_npz(d, n, x.permute(0, 2, 3, 1).numpy(), y.numpy())
        want = "not cifar100_test.npz"
    with pytest.raises(c.UsageError) as e:
        c.load_split("cifar100", str(d), train=False)
    assert want in str(e.value) and "internet" not in str(e.value)


def test_unknown_dataset_is_a_usage_error():
    with pytest.raises(c.UsageError):
        c.load_split("mnist", "synthetic", True)


def crops_of(img):
    """All 9 x 9 x 2 crop-32-of-pad-4 / flip versions of one C x 32 x 32 image."""
    p = F.pad(img, (4, 4, 4, 4))
    out = []
    for dy in range(9):
        for dx in range(9):
            crop = p[:, dy:dy + 32, dx:dx + 32]
            out += [crop, crop.flip(-1)]
    return torch.stack(out)


def test_augment_is_a_random_crop_and_flip_of_each_image():
    x, _ = c.synthetic("cifar10", True, n=64)
    gen = torch.Generator().manual_seed(0)
    xa = c.augment(x, gen)
    assert xa.shape == x.shape and xa.dtype == torch.uint8
    which = []
    for i in range(len(x)):
        matches = (crops_of(x[i]) == xa[i]).flatten(1).all(1).nonzero().flatten().tolist()
        assert matches, f"augmented image {i} is no crop/flip of its original"
        which.append(matches[0])
    # random per image: many different crops, both flips
    assert len(set(which)) > 20
    assert {w % 2 for w in which} == {0, 1}
    # reproducible from the generator, different for another seed
    assert torch.equal(xa, c.augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(xa, c.augment(x, torch.Generator().manual_seed(1)))


def test_batches_cover_the_data_once_and_scale_to_unit_interval():
    x, y = c.synthetic("cifar10", True, n=50)
    got = list(c.batches(x, y, 16))
    assert [len(b[0]) for b in got] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([b[0] for b in got]), x.float() / 255)
    assert torch.equal(torch.cat([b[1] for b in got]), y)
    gen = torch.Generator().manual_seed(0)
    tr = list(c.batches(x, y, 16, gen, train=True))
    ys = torch.cat([b[1] for b in tr])
    assert sorted(ys.tolist()) == sorted(y.tolist()) and not torch.equal(ys, y)  # a shuffled permutation
    assert all(b[0].dtype == torch.float32 and b[0].min() >= 0 and b[0].max() <= 1 for b in tr)


def test_accuracy_matches_predictions():
    m = resnet8()
    x, y = c.synthetic("cifar10", True, n=30)
    m.eval()
    with torch.no_grad():
        expected = 100 * (m(x.float() / 255).argmax(1) == y).sum().item() / 30
    assert engine.accuracy(m, x, y, batch_size=7) == pytest.approx(expected)


def test_eps_scales():
    assert c.EPS == 8 / 256
    assert "0.0625" in c.eps_str(c.EPS) and "8/256" in c.eps_str(c.EPS)

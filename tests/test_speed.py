"""The fast path computes the plain path's math, and bench.py runs end to end.

Fast path: common's attacks (input-only gradients of the summed loss, parameters frozen) and common.train_step.
Plain path: bench.py's reference (mean loss, loss.backward() filling every parameter's .grad, fp32, NCHW).
On the CPU both are fp32, so with the same memory layout they must agree bit for bit; with channels_last (what
fit runs) oneDNN picks other kernels, and only rounding may differ. A few seconds, plus ~10 s for bench.py.
"""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import bench
import common as c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pair(arch="resnet8", channels_last=False):
    """The project's model and a plain copy with the same weights, and identical SGD optimisers."""
    torch.manual_seed(0)
    model = c.build_model(arch, 10)
    ref = copy.deepcopy(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5) for m in (model, ref)]
    return model, ref, *opts


def data(n=64):  # a power of two: the mean loss is then exactly the summed one scaled, bit for bit
    x, y = c.synthetic("cifar10", True, n)
    return x.float() / 255, y


@pytest.mark.parametrize("kind", ["fgsm", "pgd"])
def test_attack_equals_plain_backward(kind):
    model, ref, _, _ = pair()
    x, y = data()
    xa = c.attack(model, x, y, kind, c.EPS)
    xr = bench.ref_attack(ref, x, y, kind, c.EPS)
    assert torch.equal(xa, xr)  # same adversarial examples, bit for bit
    assert (xa - x).abs().max() <= c.EPS + 1e-7 and (xa - x).abs().max() > 0
    # the fast path did no parameter-gradient work and left the model as found; the plain one filled .grad
    assert all(p.grad is None and p.requires_grad for p in model.parameters()) and model.training
    assert all(p.grad is not None for p in ref.parameters())


def test_train_step_equals_plain_step():
    model, ref, opt, ref_opt = pair()
    x, y = data()
    for adv in c.ADV:  # one step each, chained: a divergence anywhere shows in the later losses
        loss = c.train_step(model, opt, x, y, adv, c.EPS)[0].item()
        assert loss == bench.ref_step(ref, ref_opt, x, y, adv, c.EPS), adv
        for p, q in zip(model.state_dict().values(), ref.state_dict().values()):
            assert torch.equal(p, q), adv


def test_channels_last_differs_by_rounding_only():
    model, ref, opt, ref_opt = pair(channels_last=True)
    x, y = data()
    xa, xr = c.attack(model, x, y, "fgsm", c.EPS), bench.ref_attack(ref, x, y, "fgsm", c.EPS)
    assert ((xa - x).sign() == (xr - x).sign()).float().mean() > 0.999  # the perturbation's signs
    xa, xr = c.attack(model, x, y, "pgd", c.EPS), bench.ref_attack(ref, x, y, "pgd", c.EPS)
    assert ((xa - xr).abs() < 1e-6).float().mean() > 0.99
    for adv in c.ADV:
        loss = c.train_step(model, opt, x, y, adv, c.EPS)[0].item()
        assert loss == pytest.approx(bench.ref_step(ref, ref_opt, x, y, adv, c.EPS), rel=1e-2), adv


def test_resnet56_flops():
    """125.5 M multiply-adds per 32x32 image (the usual '125 MFLOPs' of ResNet56 counts multiply-adds); layer3
    and the head, what unfreeze 12 trains, hold about a third of them."""
    macs, macs12 = bench.fwd_macs(c.build_model("resnet56", 10))
    assert macs == 125_485_696
    assert 0.3 < macs12 / macs < 0.36


def test_bench_quick_runs(tmp_path):
    """bench.py end to end on the CPU, a cohort of 2 included: every row has every path, and the estimate adds up."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, os.path.join(ROOT, "bench.py"), "--quick", "--device", "cpu", "--arch", "resnet8",
           "--batch-size", "8", "--growth", "4", "--cohorts", "2", "--out", str(out)]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    train = {f"resnet8/train/{adv}" for adv in c.ADV} | {"densenet121/train/nat"}
    evals = {f"{arch}/eval/{k}" for arch in ("resnet8", "densenet121") for k in ("clean", "fgsm", "pgd")}
    assert set(res["rows"]) == train | evals
    for name, row in res["rows"].items():
        assert set(row["img_s"]) == ({"reference", "eager", "cohort2"} if name in train else {"reference", "eager"})
        assert all(v > 0 for v in row["img_s"].values())
        assert row["speedup"] == pytest.approx(row["img_s"][row["best"]] / row["img_s"]["reference"])
    est = res["make_all"]
    assert est["total_h"] == pytest.approx(sum(est["stages_h"].values()))
    assert 0 < est["critical_path_h"] < est["total_h"]
    # the grid's jobs as the Makefile builds them: 3 sources + 3 baselines + the DenseNet, 9 transfer cohorts,
    # 33 ResNet evaluations + 30 of them on the black-box sets + the crafting
    assert est["jobs"] == {"sources + baselines": 7, "transfers": 9, "evaluations": 64}
    assert res["provenance"]["torch"] == torch.__version__ and res["peak_tflops"] is None  # no CPU peak
    assert "make all" in r.stdout and "speedup" in r.stdout


def test_make_all_estimate_counts_the_dag():
    """With every rate 1 img/s, the estimate is a count of images: check it against the protocol by hand."""
    paths = {"reference": 1.0, "eager": 1.0}
    rows = {f"resnet56/{w}": {"img_s": paths} for w in ("train/nat", "train/fgsm", "train/pgd", "eval/clean",
                                                        "eval/fgsm", "eval/pgd")}
    est = bench.estimate(rows, "resnet56")
    n_train, n_val = 47_500, 2_500
    adv_epoch = n_train + 2 * n_val + 256  # training images, clean + adversarial validation, the PGD monitor
    src = 200 * (n_train + n_val) + 2 * 200 * adv_epoch  # nat, fgsm, pgd sources; the baselines the same
    assert est["stages_h"]["sources + baselines"] * 3600 == pytest.approx(2 * src)
    tl = 3 * 50 * ((n_train + n_val) + 2 * adv_epoch)  # 3 targets x a cohort of 3
    assert est["stages_h"]["transfers"] * 3600 == pytest.approx(3 * tl)
    # one evaluation: clean, FGSM, PGD-7, 10 restarts (PGD-50 costs what PGD-7 does at equal rates: 1 each), 6 more
    # curve points; 33 of them, and 30 CIFAR-10 models classify the 2 black-box sets
    one_eval = 10_000 * (3 + 10 + 6)
    assert est["stages_h"]["evaluations"] * 3600 == pytest.approx(33 * one_eval + 30 * 2 * 10_000)
    assert est["critical_path_h"] * 3600 == pytest.approx(200 * adv_epoch + 3 * 50 * adv_epoch + one_eval)

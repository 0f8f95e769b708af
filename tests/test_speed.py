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
    out = tmp_path / "bench.json"
    cmd = [sys.executable, os.path.join(ROOT, "bench.py"), "--quick", "--device", "cpu", "--arch", "resnet8",
           "--batch-size", "8", "--growth", "4", "--out", str(out)]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    rows = {f"{arch}/{what}" for arch, whats in (("resnet8", ("train/nat", "train/fgsm", "train/pgd")),
                                                 ("densenet121", ("train/nat",)))
            for what in whats + ("eval/clean", "eval/fgsm", "eval/pgd")}
    assert set(res["rows"]) == rows
    for row in res["rows"].values():
        assert row["project_img_s"] > 0 and row["reference_img_s"] > 0
        assert row["speedup"] == pytest.approx(row["project_img_s"] / row["reference_img_s"])
    for est in res["make_all"].values():
        assert est["total_h"] > 0 and est["total_pflop"] > 0
        assert est["total_h"] == pytest.approx(sum(est["stages_h"].values()))
    assert res["provenance"]["torch"] == torch.__version__ and res["peak_tflops"] is None  # no CPU peak
    assert "make all" in r.stdout and "speedup" in r.stdout

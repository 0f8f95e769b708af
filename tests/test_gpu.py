"""The captured (CUDA graph) path against the eager one, on a GPU; every test skips without CUDA.

Captured and eager run the same kernels in bf16, so they agree to bf16 rounding, not bit for bit (cuDNN may pick
other algorithms inside a capture). `python -m pytest -q tests/test_gpu.py` on a CUDA machine; `make gpu-check`
runs it with the benchmark and `make mini`.
"""
import copy

import pytest
import torch

import common as c
import train_source

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def cohort(k, arch="resnet20", seed=0):
    torch.manual_seed(seed)
    models = [c.build_model(arch, 10).cuda().to(memory_format=torch.channels_last) for _ in range(k)]
    return models, sgd(models)


def data(n=400):
    x, y = c.synthetic("cifar10", True, n)
    return x.cuda(), y.cuda()


def sgd(models):
    return [torch.optim.SGD(m.parameters(), lr=torch.tensor(0.1, device="cuda"), momentum=0.9, weight_decay=1e-5,
                            fused=True) for m in models]


def train(models, opts, adv, capture, n_steps=6, batch=100, seeds=None):
    """fit's inner loop for a few steps (each member its own data order); the losses per step and member."""
    x, y = data()
    step = c.make_step(models, opts, adv, c.EPS, capture=capture)
    gens = [torch.Generator("cuda").manual_seed(i) for i in (seeds or range(len(models)))]
    its = [c.batches(x, y, batch, g, train=True) for g in gens]
    losses = []
    for _ in range(n_steps):
        bs = [next(it, None) for it in its]
        if bs[0] is None:
            its = [c.batches(x, y, batch, g, train=True) for g in gens]
            bs = [next(it) for it in its]
        losses.append([o[0].item() for o in step(bs, gens)])
    return losses


def close(m1, m2, tol=2e-2):
    for (n, p), q in zip(m1.state_dict().items(), m2.state_dict().values()):
        if p.is_floating_point():
            assert (p - q).norm() <= tol * (q.norm() + 1e-3), n


@pytest.mark.parametrize("adv", c.ADV)
def test_captured_step_equals_eager(adv):
    (m1,), (o1,) = cohort(1)
    (m2,), (o2,) = cohort(1)
    for m in (m1, m2):
        c.set_train_mode(m)
    l1, l2 = train([m1], [o1], adv, True), train([m2], [o2], adv, False)
    assert [x[0] for x in l1] == pytest.approx([x[0] for x in l2], rel=2e-2)
    close(m1, m2)


def test_cohort_equals_its_members_alone():
    models, opts = cohort(3)
    alone = [copy.deepcopy(m) for m in models]
    for m in models + alone:
        c.set_train_mode(m)
    got = train(models, opts, "pgd", True)
    for i, m in enumerate(alone):
        want = train([m], sgd([m]), "pgd", True, seeds=[i])
        assert [x[i] for x in got] == pytest.approx([x[0] for x in want], rel=2e-2)
        close(models[i], m)


def test_no_host_sync_in_a_captured_step_or_evaluation():
    models, opts = cohort(2)
    for m in models:
        c.set_train_mode(m)
    x, y = data(200)
    step = c.make_step(models, opts, "pgd", c.EPS)
    bs = [(x[:100].float() / 255, y[:100])] * 2
    step(bs, [None, None])  # the capture
    f = c.eval_step(models[0], "pgd", c.EPS)
    f(x[:100].float() / 255, y[:100])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            out = step(bs, [None, None])
            f(x[:100].float() / 255, y[:100])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out[0][0].isfinite()


def test_captured_evaluation_equals_eager():
    (m,), _ = cohort(1)
    x, y = data(500)
    for kind in (None, "fgsm", "pgd"):
        a = c.accuracy(m, x, y, batch_size=200, kind=kind)  # 200, 200, then a partial batch of 100: two graphs
        f = c.eval_step(m, kind, c.EPS, capture=False)
        b = 100 * sum(f(xb, yb).sum().item() for xb, yb in c.batches(x, y, 200)) / len(y)
        assert abs(a - b) <= 1.0, kind


def test_fit_on_cuda_with_a_partial_last_batch(tmp_path):
    """fit's captured path end to end: 95 training images in batches of 20 leave a partial one (eager), and a
    cohort of two seeds trains each as its own run would, to bf16 tolerance."""
    args = ["--dataset", "cifar10", "--adv", "pgd", "--arch", "resnet8", "--epochs", "2", "--limit", "100",
            "--batch-size", "20", "--data-dir", "synthetic", "--device", "cuda", "--steps", "2"]
    train_source.main([*args, "--seed", "0", "1", "--out", str(tmp_path / "co" / "s{seed}.pt")])
    train_source.main([*args, "--seed", "1", "--out", str(tmp_path / "alone.pt")])
    a, b = (torch.load(p) for p in (tmp_path / "co" / "s1.pt", tmp_path / "alone.pt"))
    assert a["n_train"] == 95 and a["provenance"]["device"] != "cpu"
    ma, mb = (c.model_from_checkpoint(ck) for ck in (a, b))
    close(ma, mb, tol=5e-2)
    assert [r["loss"] for r in a["rows"]] == pytest.approx([r["loss"] for r in b["rows"]], rel=5e-2)

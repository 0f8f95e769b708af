"""The captured (CUDA graph) path against the eager one, on a GPU; every test skips without CUDA.

Captured and eager run the same kernels in bf16, so they agree to bf16 rounding, not bit for bit (cuDNN may pick
other algorithms inside a capture). Every capture here runs with capture "on": a capture that raises or fails its
self-check is an error, not a quiet fallback to eager (which would make captured equal eager trivially). Each test
names the broken capture it would catch; tests/test_capture.py runs the same logic on the CPU with stand-ins for
CUDA graphs, each shown to fail against that broken capture. `make gpu-check` runs this file first.
"""
import copy
import os
import subprocess
import sys

import pytest
import torch

import common as c
import engine
import train_source
from test_scripts import Crash, crash_after_epoch, load

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 2e-2  # bf16: relative, on losses and on each weight tensor's norm


def cohort(k, arch="resnet20", seed=0):
    torch.manual_seed(seed)
    models = [c.build_model(arch, 10).cuda().to(memory_format=torch.channels_last) for _ in range(k)]
    for m in models:
        c.set_train_mode(m)
    return models, sgd(models)


def data(n=500):
    x, y = c.synthetic("cifar10", True, n)
    return x.cuda(), y.cuda()


def sgd(models):
    return [torch.optim.SGD(m.parameters(), lr=torch.tensor(0.1, device="cuda"), momentum=0.9, weight_decay=1e-5,
                            fused=True) for m in models]


def train(models, opts, adv, capture, sizes=(100,) * 5, lr_drop_at=None, seeds=None):
    """fit's inner loop over batches of the given sizes (each member its own data order, from its seed); the
    learning rate drops 0.1 -> 0.01 before step lr_drop_at. Returns the losses per step and member, and the step."""
    x, y = data()
    step = engine.make_step(models, opts, adv, c.EPS, capture=capture)
    gens = [torch.Generator("cuda").manual_seed(i) for i in (seeds or range(len(models)))]
    perms = [torch.randperm(len(x), device="cuda", generator=g) for g in gens]
    losses, lo = [], 0
    for i, n in enumerate(sizes):
        if i == lr_drop_at:
            for o in opts:
                engine.set_lr(o, 0.01)
        bs = [(c.augment(x[p[lo:lo + n]], g).float() / 255, y[p[lo:lo + n]]) for p, g in zip(perms, gens)]
        losses.append([o[0].item() for o in step(bs, gens)])
        lo += n
    return losses, step


def close(m1, m2, tol=TOL):
    for (n, p), q in zip(m1.state_dict().items(), m2.state_dict().values()):
        if p.is_floating_point():
            assert (p - q).norm() <= tol * (q.norm() + 1e-3), n
        else:
            assert torch.equal(p, q), n  # integer buffers (num_batches_tracked): exact


def close_momentum(o1, o2, tol=TOL):
    for p, q in zip(o1.param_groups[0]["params"], o2.param_groups[0]["params"]):
        a, b = o1.state[p]["momentum_buffer"], o2.state[q]["momentum_buffer"]
        assert (a - b).norm() <= tol * (b.norm() + 1e-3)


@pytest.mark.parametrize("adv", [k for k, o in c.OBJECTIVES.items() if not o.draws])
def test_captured_steps_equal_eager(adv):
    """Batches of 100, 100, 37, 100, 100 with the learning rate cut to 0.01 halfway, a cohort of two, captured
    against eager copies: per-step losses, final weights, momentum and integer buffers. Catches a learning rate
    baked into the graph, a partial batch (eager) that disturbs the replays after it, a warm-up that leaves momentum
    or BatchNorm counters behind, and members' updates landing on each other."""
    models, opts = cohort(2)
    refs = copy.deepcopy(models)
    ref_opts = sgd(refs)
    sizes = (100, 100, 37, 100, 100)
    got, step = train(models, opts, adv, "on", sizes, lr_drop_at=3)
    want, _ = train(refs, ref_opts, adv, "off", sizes, lr_drop_at=3)
    assert step.ran["why"] is None and (step.ran["captured"], step.ran["eager"]) == (4, 1)
    assert sum(got, []) == pytest.approx(sum(want, []), rel=TOL)  # every step's loss, every member
    for m, r, o, ro in zip(models, refs, opts, ref_opts):
        close(m, r)
        close_momentum(o, ro)


def test_evaluation_graphs_follow_the_weights():
    """Evaluation graphs captured, then captured training steps move the weights in place, then the graphs are
    replayed: they must agree with eager predictions of the new weights. Catches a graph that reads stale weights
    (weights reallocated after its capture) or a training graph and evaluation graphs overwriting each other's
    memory."""
    (m,), (o,) = cohort(1)
    x, y = data()
    xb, yb = x[:200].float() / 255, y[:200]
    fs = {k: engine.eval_step(m, k, c.EPS, capture="on") for k in (None, "fgsm", "pgd")}
    for f in fs.values():
        f(xb, yb)  # the captures
    w = m.linear.weight.clone()
    train([m], [o], "pgd", "on", (100,) * 4)
    assert not torch.equal(w, m.linear.weight)  # moved in place
    for k, f in fs.items():
        got, want = f(xb, yb), engine.eval_step(m, k, c.EPS, capture="off")(xb, yb)
        assert (got != want).float().mean() <= 0.01, k


def test_cohort_equals_its_members_alone():
    """Catches a cohort graph whose members share or swap anything (streams, buffers, outputs)."""
    models, opts = cohort(3)
    alone = [copy.deepcopy(m) for m in models]
    got, _ = train(models, opts, "pgd", "on")
    for i, m in enumerate(alone):
        want, _ = train([m], sgd([m]), "pgd", "on", seeds=[i])
        assert [x[i] for x in got] == pytest.approx([x[0] for x in want], rel=TOL)
        close(models[i], m)


def test_no_host_sync_in_a_captured_step_or_evaluation():
    """Catches a capture that syncs with the host on replay (e.g. a learning rate read back as a Python float)."""
    models, opts = cohort(2)
    x, y = data(200)
    step = engine.make_step(models, opts, "pgd", c.EPS, capture="on")
    bs = [(x[:100].float() / 255, y[:100])] * 2
    step(bs, [None, None])  # the capture
    f = engine.eval_step(models[0], "pgd", c.EPS, capture="on")
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


def test_fp32_evaluation_is_its_own_graph():
    """evaluate.py --precision fp32: a graph of its own (not the bf16 one replayed), equal to eager fp32."""
    (m,), _ = cohort(1)
    x, y = data(200)
    xb, yb = x.float() / 255, y
    bf16 = engine.eval_step(m, "pgd", c.EPS, capture="on")(xb, yb)
    with c.precision("fp32"):
        got = engine.eval_step(m, "pgd", c.EPS, capture="on")(xb, yb)
        want = engine.eval_step(m, "pgd", c.EPS, capture="off")(xb, yb)
    assert len(engine._CAPTURED.evals[m]) == 2 and (got != want).float().mean() <= 0.01
    assert bf16.shape == got.shape


# ----------------------------------------------------------------------------------------------------------
# fit on CUDA: partial batches, resume, a CPU-started run, a member joining late

ARGS = ["--dataset", "cifar10", "--adv", "pgd", "--arch", "resnet8", "--limit", "100", "--batch-size", "20",
        "--data-dir", "synthetic", "--steps", "2", "--milestones", "0.5"]
CUDA = ["--device", "cuda", "--capture", "on"]


def same_run(a, b, tol=5e-2):
    a, b = load(a), load(b)
    close(c.model_from_checkpoint(a), c.model_from_checkpoint(b), tol)
    assert [r["loss"] for r in a["rows"]] == pytest.approx([r["loss"] for r in b["rows"]], rel=tol)


def test_fit_on_cuda_with_a_partial_last_batch(tmp_path):
    """fit's captured path end to end: 95 training images in batches of 20 leave a partial one (eager), and a
    cohort of two seeds trains each as its own run would, to bf16 tolerance."""
    args = [*ARGS, "--epochs", "2", *CUDA]
    train_source.main([*args, "--seed", "0", "1", "--out", str(tmp_path / "co" / "s{seed}.pt")])
    train_source.main([*args, "--seed", "1", "--out", str(tmp_path / "alone.pt")])
    a = load(tmp_path / "co" / "s1.pt")
    assert a["n_train"] == 95 and a["provenance"]["device"] != "cpu"
    r = a["steps_ran"]
    assert len(r) == 1 and r[0]["steps"] == "captured" and r[0]["cohort"] == 2 and r[0]["captured"] == 2 * 4
    same_run(tmp_path / "co" / "s1.pt", tmp_path / "alone.pt")


def test_resume_on_cuda_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """Cut off after epoch 1 of 3, resumed: the same as 3 epochs straight (the lr drops after epoch 2). Catches a
    resumed capture that zeroes the loaded momentum, or a graph that keeps the learning rate it was made with."""
    args = lambda d: [*ARGS, "--epochs", "3", *CUDA, "--out", str(tmp_path / d / "x.pt")]  # noqa
    train_source.main(args("straight"))
    with monkeypatch.context() as mp:
        crash_after_epoch(mp, 1)
        with pytest.raises(Crash):
            train_source.main(args("resumed"))
    train_source.main(args("resumed"))
    same_run(tmp_path / "straight" / "x.pt", tmp_path / "resumed" / "x.pt")
    r = load(tmp_path / "resumed" / "x.pt")["steps_ran"]
    assert [x["epochs"] for x in r] == [[1, 1], [2, 3]] and all(x["steps"] == "captured" for x in r)


def test_a_cpu_started_run_resumes_on_cuda(tmp_path, monkeypatch):
    """Started on the CPU, cut off, resumed on CUDA with capture on. Catches the optimiser taking fused/foreach
    from the CPU checkpoint: foreach SGD with a tensor learning rate syncs with the host inside the capture."""
    out = str(tmp_path / "x.pt")
    with monkeypatch.context() as mp:
        crash_after_epoch(mp, 1)
        with pytest.raises(Crash):
            train_source.main([*ARGS, "--epochs", "2", "--device", "cpu", "--out", out])
    train_source.main([*ARGS, "--epochs", "2", *CUDA, "--out", out])
    r = load(out)["steps_ran"]
    assert [(x["epochs"], x["steps"], x["why"]) for x in r] == [([1, 1], "eager", "cpu"), ([2, 2], "captured", None)]
    assert r[1]["device"] == torch.cuda.get_device_name()


def test_a_member_joining_late_equals_its_separate_run(tmp_path, monkeypatch):
    """Seed 0 cut off after epoch 1; the cohort of seeds 0 and 1 trains seed 1's epoch 1 alone, then both (a new
    graph: the recapture). Catches a cohort that keeps replaying the old graph, or one whose recapture disturbs
    the member already training."""
    args = [*ARGS, "--epochs", "3", *CUDA]
    template = str(tmp_path / "co" / "s{seed}.pt")
    with monkeypatch.context() as mp:
        crash_after_epoch(mp, 1)
        with pytest.raises(Crash):
            train_source.main([*args, "--seed", "0", "--out", template])
    train_source.main([*args, "--seed", "0", "1", "--out", template])
    for s in (0, 1):
        train_source.main([*args, "--seed", str(s), "--out", str(tmp_path / f"alone{s}.pt")])
        same_run(tmp_path / "co" / f"s{s}.pt", tmp_path / f"alone{s}.pt")
    assert [x["cohort"] for x in load(tmp_path / "co" / "s1.pt")["steps_ran"]] == [1, 2]


DESTROYED = """
import gc, sys, weakref
import torch
sys.path.insert(0, {root!r})
import common as c
torch.manual_seed(0)
m = c.build_model("resnet20", 10).cuda().to(memory_format=torch.channels_last)
x, y = c.synthetic("cifar10", False, 200)
x, y = x.cuda().float() / 255, y.cuda()
evals = [engine.eval_step(m, k, c.EPS, capture="on") for k in (None, "fgsm", "pgd")]
for f in evals:
    f(x, y)
c.set_train_mode(m)
o = torch.optim.SGD(m.parameters(), lr=torch.tensor(0.1, device="cuda"), momentum=0.9, fused=True)
step = engine.make_step([m], [o], "nat", capture="on")
step([(x[:100], y[:100])], [None])
old = weakref.ref(engine._CAPTURED.graphs[-1])
del step  # a cohort that changes drops its step: its graph must stay
gc.collect()
assert old() is not None, "a graph was freed with its step"
g = torch.cuda.CUDAGraph()  # and a graph really destroyed on this stream (cuBLAS inside), as upstream's issue has it
a = torch.randn(256, 256, device="cuda")
with torch.cuda.graph(g):
    b = a @ a
g.replay()
del g, b
gc.collect()
m.eval()
for k, f in zip((None, "fgsm", "pgd"), evals):
    got, want = f(x, y), engine.eval_step(m, k, c.EPS, capture="off")(x, y)
    assert (got != want).float().mean() <= 0.01, k
torch.cuda.synchronize()
print("OK")
"""


def test_destroyed_graphs_leave_live_evaluation_graphs_intact(tmp_path):
    """With CUDA_LAUNCH_BLOCKING=1, so that a kernel fault shows where it happens: a training step dropped while
    evaluation graphs live, and a graph destroyed on the same stream, then the evaluation graphs replayed against
    eager. Catches graphs freed mid-process (in torch 2.14 CUDAGraph::reset clears the cuBLAS workspaces of its
    stream, which a live graph may still use): the registry must keep every graph of the process."""
    script = tmp_path / "destroyed.py"
    script.write_text(DESTROYED.format(root=ROOT))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CUDA_LAUNCH_BLOCKING": "1"})
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout[-2000:] + r.stderr[-2000:]

"""The captured path's logic on the CPU, with CUDA's graph API replaced by a stand-in that records the Python
function and reruns it on replay. What it checks is everything but CUDA itself: the warm-up steps leave no trace
(weights, BatchNorm statistics and momentum restored), the static input buffers are refilled, the outputs are
rewritten in place, a partial last batch runs eagerly, a cohort's fork/join keeps each member its own run, a capture
that raises falls back to an eager run's results, the self-check catches broken graphs, graphs live for the process
and evaluation graphs share one memory pool. On a GPU, tests/test_gpu.py checks the real thing.

Each test names the broken capture it catches; broken stand-ins (StaleLr, KeepsMomentum, Swapped, BakedWeights)
play the graphs that would compute something else."""
import contextlib
import copy
import gc
import json
import os
import subprocess
import sys
import weakref

import pytest
import torch

import common as c
import engine
import evaluate
import train_source
from test_scripts import Crash, assert_identical, crash_after_epoch, load


class FakeGraph:
    """A stand-in for torch.cuda.CUDAGraph: the capture runs the function once and undoes it (a real capture
    records kernels without running them); a replay reruns it and rewrites the captured outputs in place."""
    keeps_momentum = False  # a broken capture: its run's momentum stays behind

    def replay(self):
        new = self.fn()
        for a, b in zip(flat(self.out), flat(new)):
            a.copy_(b)


class StaleLr(FakeGraph):
    """A broken graph: it replays with the learning rates it was captured with."""
    def replay(self):
        now = [[g["lr"] for g in o.param_groups] for o in self.opts]
        engine._set_lrs(self.opts, self.lrs)
        super().replay()
        engine._set_lrs(self.opts, now)


class KeepsMomentum(FakeGraph):
    """A broken capture: the momentum buffers keep what its run (as the warm-up's) put in them."""
    keeps_momentum = True


class Swapped(FakeGraph):
    """A broken graph: the first two members' outputs land on each other."""
    def replay(self):
        super().replay()
        (l0, *r0), (l1, *r1) = [[t.clone() for t in o] for o in self.out[:2]]
        for a, b in zip(self.out[0], [l1, *r1]):
            a.copy_(b)
        for a, b in zip(self.out[1], [l0, *r0]):
            a.copy_(b)


class BakedWeights(FakeGraph):
    """A broken graph: it computes with the weights of the model at its capture (as one whose weights were
    reallocated would read freed memory). BakedWeights.model is set by the test."""
    model = None

    def replay(self):
        sd = self.model.state_dict()
        now = {k: v.clone() for k, v in sd.items()}
        with torch.no_grad():
            for k, v in self.weights.items():
                sd[k].copy_(v)
            super().replay()
            for k, v in now.items():
                sd[k].copy_(v)


def flat(x):
    return [t for v in x for t in flat(v)] if isinstance(x, (list, tuple)) else [x]


def snapshot(tensors):
    saved = [t.clone() for t in tensors]

    def restore():
        with torch.no_grad():
            for t, v in zip(tensors, saved):
                t.copy_(v)
    return restore


@contextlib.contextmanager
def fake_capture(graph, pool=None):
    frame = sys._getframe(2)  # engine._capture's: what it captures (fn, state, opts), then its outputs (out)
    state, opts = frame.f_locals["state"], frame.f_locals["opts"]
    moms = [t for o in opts for st in o.state.values() for t in st.values() if torch.is_tensor(t)]
    undo = snapshot(list(state) + ([] if graph.keeps_momentum else moms))
    graph.pool, graph.opts = pool, opts
    graph.lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    if BakedWeights.model is not None:
        graph.weights = {k: v.clone() for k, v in BakedWeights.model.state_dict().items()}
    try:
        yield
        graph.fn, graph.out = frame.f_locals["fn"], frame.f_locals["out"]
    finally:
        undo()  # a real capture runs nothing: no step happened


class Stream:
    def wait_stream(self, other):
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA graphs played by FakeGraph (fake_cuda.graph: another stand-in), models taken to be on CUDA, and a fresh
    process state (no graphs, no fallback)."""
    class Fake:
        graph = FakeGraph
    fake = Fake()
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: fake.graph())
    monkeypatch.setattr(torch.cuda, "graph", fake_capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", object)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "set_stream", lambda s: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(engine, "_device_of", lambda model: torch.device("cuda"))
    monkeypatch.setattr(engine, "_CAPTURED", engine._Process())
    monkeypatch.setattr(BakedWeights, "model", None)
    return fake


def fail_at(monkeypatch, name, n):
    """common.<name> raises at its n-th call from now on (a failure in the middle of a warm-up, capture, replay)."""
    real, calls = getattr(c, name), []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError("injected failure")
        return real(*args, **kw)
    monkeypatch.setattr(c, name, failing)


def sgd(models):
    return [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5) for m in models]


def cohort(k=2, seed=0):
    torch.manual_seed(seed)
    models = [c.build_model("resnet8", 10) for _ in range(k)]
    for m in models:
        c.set_train_mode(m)
    refs = copy.deepcopy(models)
    return models, sgd(models), refs, sgd(refs)


def data(n=70):
    x, y = c.synthetic("cifar10", True, n)
    return x.float() / 255, y


def member_batches(x, y, lo, hi):
    return [(x[lo:hi], y[lo:hi]), (x[lo + 1:hi + 1], y[lo + 1:hi + 1])]  # each member its own batch


def assert_same_members(models, opts, refs, ref_opts):
    """Weights, BatchNorm statistics and counters, momentum and gradients: equal to the bit."""
    for m, r in zip(models, refs):
        assert all(torch.equal(p, q) for p, q in zip(m.state_dict().values(), r.state_dict().values()))
        for p, q in zip(m.parameters(), r.parameters()):
            assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad))
    for o, r in zip(opts, ref_opts):
        assert len(o.state) == len(r.state)
        for p, q in zip(o.param_groups[0]["params"], r.param_groups[0]["params"]):
            assert o.state[p].keys() == r.state[q].keys()
            assert all(torch.equal(o.state[p][k], r.state[q][k]) for k in o.state[p])
        assert [g["lr"] for g in o.param_groups] == [g["lr"] for g in r.param_groups]


def run_steps(step, models, opts, refs, ref_opts, adv, sizes, x, y, lr_drop_at=None):
    """Steps of the given batch sizes through step and through eager train_step on the references; the outputs
    must be equal at every step. The learning rate drops 0.1 -> 0.01 before step lr_drop_at."""
    lo = 0
    for i, n in enumerate(sizes):
        if i == lr_drop_at:
            for o in opts + ref_opts:
                engine.set_lr(o, 0.01)
        bs = member_batches(x, y, lo, lo + n)
        got = [tuple(t.clone() for t in out) for out in step(bs, [None, None])]
        want = [c.train_step(m, o, xb, yb, adv, c.EPS, steps=2) for m, o, (xb, yb) in zip(refs, ref_opts, bs)]
        for g, w in zip(got, want):
            assert all(torch.equal(a, b) for a, b in zip(g, w)), (adv, i)
        lo = (lo + n) % 40


# ----------------------------------------------------------------------------------------------------------
# The captured path equals eager

@pytest.mark.parametrize("adv", [k for k, o in c.OBJECTIVES.items() if not o.draws])
def test_captured_cohort_equals_eager_runs(fake_cuda, adv):
    """Catches a graph that replays a stale learning rate (the lr drops halfway), a partial batch that disturbs
    the replays after it, warm-up steps that leave a trace in weights, BatchNorm counters or momentum."""
    models, opts, refs, ref_opts = cohort()
    x, y = data()
    step = engine.make_step(models, opts, adv, c.EPS, steps=2, capture="on")
    run_steps(step, models, opts, refs, ref_opts, adv, (16, 16, 6, 16, 16), x, y, lr_drop_at=2)
    assert_same_members(models, opts, refs, ref_opts)
    assert step.ran == {"why": None, "capture": "on", "captured": 4, "eager": 1, "cohort": 2}
    assert len(engine._CAPTURED.checks) == 1 and engine._CAPTURED.checks[0]["difference"] == 0  # CPU fp32: to the bit


@pytest.mark.parametrize("adv", [k for k, o in c.OBJECTIVES.items() if o.draws])
def test_an_objective_that_draws_random_numbers_runs_eagerly_with_its_reason(fake_cuda, monkeypatch, adv):
    """TRADES starts its inner maximisation at a random point drawn from the epoch's generator, which a replay
    cannot redraw. Its table's `draws` makes the step eager with the reason recorded: no graph, no self-check,
    exactly eager train_step with each member's generator. Catches an engine that ignores the field: the same
    objective declared deterministic is captured, and the first replay (a stale draw) fails the self-check."""
    models, opts, refs, ref_opts = cohort()
    x, y = data()
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    step = engine.make_step(models, opts, adv, c.EPS, steps=2, capture="on")
    for lo in (0, 16):
        bs = member_batches(x, y, lo, lo + 16)
        got = step(bs, gens())
        want = [c.train_step(m, o, xb, yb, adv, c.EPS, steps=2, gen=g)
                for m, o, (xb, yb), g in zip(refs, ref_opts, bs, gens())]
        assert all(torch.equal(a, b) for g, w in zip(got, want) for a, b in zip(g, w))
    assert_same_members(models, opts, refs, ref_opts)
    assert step.ran == {"why": f"{adv} draws random numbers", "capture": "on", "captured": 0, "eager": 2, "cohort": 2}
    assert engine._CAPTURED.graphs == [] and engine._CAPTURED.checks == [] and engine._CAPTURED.fallback is None
    monkeypatch.setitem(c.OBJECTIVES, adv, c.OBJECTIVES[adv]._replace(draws=False))  # a row that hides its draws
    models, opts, _, _ = cohort()
    with pytest.raises(RuntimeError, match="self-check of the captured training step"):
        engine.make_step(models, opts, adv, c.EPS, steps=2, capture="on")(member_batches(x, y, 0, 16), gens())


def test_captured_evaluation_equals_eager(fake_cuda):
    model = c.build_model("resnet8", 10)
    x, y = c.synthetic("cifar10", True, 50)
    for kind in (None, "fgsm", "pgd"):
        f, e = engine.eval_step(model, kind, c.EPS, capture="on"), engine.eval_step(model, kind, c.EPS, capture="off")
        for lo, hi in ((0, 20), (20, 40), (40, 50)):  # a graph per batch size, replayed on new inputs
            xb = x[lo:hi].float() / 255
            assert torch.equal(f(xb, y[lo:hi]), e(xb, y[lo:hi])), kind
    assert len(engine._CAPTURED.graphs) == 6


def test_evaluation_graphs_follow_the_weights(fake_cuda):
    """Catches an evaluation graph that keeps computing with the weights it was captured with: replayed after
    training steps changed them, it must still equal eager predictions."""
    torch.manual_seed(0)
    model = c.build_model("resnet8", 10)
    BakedWeights.model = model
    x, y = data(60)
    fs = {k: engine.eval_step(model, k, c.EPS, steps=2, capture="on") for k in (None, "fgsm", "pgd")}
    for f in fs.values():
        f(x[:20], y[:20])  # the captures, checked against eager on their first replay
    opt = sgd([model])[0]
    for i in range(3):  # training moves the weights in place
        c.set_train_mode(model)
        c.train_step(model, opt, x[20 * i:20 * i + 20], y[20 * i:20 * i + 20], "nat")
    for k, f in fs.items():
        assert torch.equal(f(x[20:40], y[20:40]), engine.eval_step(model, k, c.EPS, steps=2, capture="off")(x[20:40],
                                                                                                      y[20:40])), k


# ----------------------------------------------------------------------------------------------------------
# A capture that raises: one line, nothing half-done, an eager run's results

@pytest.mark.parametrize("phase, call", [("warm-up", 4), ("capture", 8), ("first replay", 10)])
def test_a_failed_capture_falls_back_to_an_eager_run(fake_cuda, monkeypatch, capsys, phase, call):
    """A cohort of 2 with momentum from an eager step already; train_step raises at its call-th call: calls 1-6
    are the warm-up (3 x 2 members), 7-8 the capture, 9-10 the first replay, each after the other member's step
    changed its weights. Catches a fallback that leaves the warm-up's or the replay's weights, the optimiser's
    buffers, the learning rate of the capture (0) or stale gradients behind."""
    models, opts, refs, ref_opts = cohort()
    x, y = data()
    bs = member_batches(x, y, 0, 16)
    for ms, os_ in ((models, opts), (refs, ref_opts)):  # momentum exists: the fallback must restore it, not zero it
        engine.make_step(ms, os_, "pgd", c.EPS, steps=2, capture="off")(bs, [None, None])
    f = engine.eval_step(models[0], "fgsm")  # made before the failure: it must go eager too
    fail_at(monkeypatch, "train_step", call)
    step = engine.make_step(models, opts, "pgd", c.EPS, steps=2)
    run_steps(step, models, opts, refs, ref_opts, "pgd", (16, 16, 6), x, y)
    assert_same_members(models, opts, refs, ref_opts)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"capturing the training step (2 models) failed in its {phase}" in err[0]
    assert "injected failure" in err[0] and "continuing eagerly" in err[0] and "--capture off" in err[0]
    assert step.ran["why"].startswith("fallback: capturing the training step") and step.ran["captured"] == 0
    n = len(engine._CAPTURED.graphs)
    assert torch.equal(f(x[:8], y[:8]), engine.eval_step(models[0], "fgsm", capture="off")(x[:8], y[:8]))
    assert len(engine._CAPTURED.graphs) == n  # the whole process runs eagerly from then on


@pytest.mark.parametrize("phase, call", [("warm-up", 2), ("capture", 4), ("first replay", 5)])
def test_a_failed_evaluation_capture_falls_back(fake_cuda, monkeypatch, capsys, phase, call):
    """predict runs once per evaluation: calls 1-3 are the warm-up, 4 the capture, 5 the first replay."""
    model = c.build_model("resnet8", 10)
    x, y = data(40)
    fail_at(monkeypatch, "predict", call)
    f = engine.eval_step(model, "pgd", c.EPS, steps=2)
    got = [f(x[i:i + 20], y[i:i + 20]) for i in (0, 20)]
    want = [engine.eval_step(model, "pgd", c.EPS, steps=2, capture="off")(x[i:i + 20], y[i:i + 20]) for i in (0, 20)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"capturing the pgd evaluation graph (batch 20) failed in its {phase}" in err[0]


def test_capture_on_stops_at_a_failure(fake_cuda, monkeypatch):
    models, opts, _, _ = cohort()
    x, y = data()
    fail_at(monkeypatch, "train_step", 3)
    with pytest.raises(RuntimeError, match="failed in its warm-up.*--capture on stops here"):
        engine.make_step(models, opts, "nat", capture="on")(member_batches(x, y, 0, 16), [None, None])


# ----------------------------------------------------------------------------------------------------------
# The self-check: a first replay that differs from eager

@pytest.mark.parametrize("graph, what", [(StaleLr, "member 1's weights update"),
                                         (KeepsMomentum, "member 1's momentum update"), (Swapped, "member 2's loss")])
def test_the_self_check_catches_a_broken_graph(fake_cuda, capsys, graph, what):
    """A graph that replays the learning rate of its capture (0: the capture runs with lr 0 so that this shows at
    once), momentum left behind by its capture, or two members' outputs swapped: the first replay differs from an
    eager step of copies of the members; the process says so and runs eagerly, with an eager run's results."""
    fake_cuda.graph = graph
    torch.manual_seed(0)
    models = [c.build_model("resnet8", 10), c.build_model("resnet8", 10)]  # two seeds: their losses differ
    for m in models:
        c.set_train_mode(m)
    refs = copy.deepcopy(models)
    opts, ref_opts = sgd(models), sgd(refs)
    x, y = data()
    step = engine.make_step(models, opts, "fgsm", c.EPS)
    run_steps(step, models, opts, refs, ref_opts, "fgsm", (16, 16, 16), x, y, lr_drop_at=1)
    assert_same_members(models, opts, refs, ref_opts)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the self-check of the captured training step (2 models) failed" in err[0], err
    assert what in err[0] and "continuing eagerly" in err[0]
    assert step.ran["why"].startswith("fallback: the self-check") and step.ran["captured"] == 0


def test_the_self_check_catches_a_stale_evaluation_input(fake_cuda):
    """The capture runs on other inputs than the first replay: a graph that replays its capture's batch differs."""
    class StaleInput(FakeGraph):
        def replay(self):
            pass  # the outputs stay those the capture computed
    fake_cuda.graph = StaleInput
    model = c.build_model("resnet8", 10)
    x, y = c.synthetic("cifar10", True, 100)
    f = engine.eval_step(model, capture="auto")
    assert torch.equal(f(x.float() / 255, y), engine.eval_step(model, capture="off")(x.float() / 255, y))
    assert engine._CAPTURED.fallback.startswith("the self-check of the captured clean evaluation graph (batch 100)")


# ----------------------------------------------------------------------------------------------------------
# Graphs and memory

def test_graphs_live_for_the_process(fake_cuda):
    """Catches a graph destroyed with its step or model (in torch 2.14 that clears cuBLAS workspaces another live
    graph may use): every graph stays in the process's registry."""
    models, opts, _, _ = cohort()
    x, y = data()
    step = engine.make_step(models, opts, "nat")
    step(member_batches(x, y, 0, 16), [None, None])
    f = engine.eval_step(models[0])
    f(x[:16], y[:16])
    alive = [weakref.ref(g) for g in engine._CAPTURED.graphs]
    assert len(alive) == 2
    del step, f, models, opts
    gc.collect()
    assert all(r() is not None for r in alive)


def test_evaluation_graphs_share_one_pool(fake_cuda):
    """Every evaluation graph of the process in one memory pool (the largest one's memory, not the sum); a
    training graph in its own."""
    models, opts, _, _ = cohort()
    x, y = data()
    engine.make_step(models, opts, "nat")(member_batches(x, y, 0, 16), [None, None])
    for m in models:
        for kind, n in ((None, 16), ("pgd", 16), ("pgd", 8)):
            engine.eval_step(m, kind, steps=1)(x[:n], y[:n])
    train, *evals = engine._CAPTURED.graphs
    assert train.pool is None and len(evals) == 6
    assert evals[0].pool is not None and all(g.pool is evals[0].pool for g in evals)


# ----------------------------------------------------------------------------------------------------------
# fit through the captured path: resume, a member joining late, what ran is recorded

FIT = ["--dataset", "cifar10", "--adv", "fgsm", "--steps", "1", "--arch", "resnet8", "--limit", "40",
       "--batch-size", "20", "--data-dir", "synthetic", "--device", "cpu", "--epochs", "3", "--milestones", "0.5"]


def test_fit_resumes_and_takes_late_members_through_the_captured_path(fake_cuda, tmp_path, monkeypatch):
    """Seed 0 cut off after epoch 1; then a cohort of seeds 0 and 1: seed 1 trains epoch 1 alone, seed 0 joins
    for epoch 2 (a new graph). Each equals its uninterrupted run, every step captured and none fallen back.
    Catches a resume whose capture does not restore the loaded momentum (the self-check then falls back, which
    the records show), and a cohort that keeps the old graph when a member joins."""
    template = str(tmp_path / "co" / "s{seed}.pt")
    with monkeypatch.context() as mp:
        crash_after_epoch(mp, 1)
        with pytest.raises(Crash):
            train_source.main([*FIT, "--seed", "0", "--out", template])
    train_source.main([*FIT, "--seed", "0", "1", "--out", template])
    for s in (0, 1):
        train_source.main([*FIT, "--seed", str(s), "--out", str(tmp_path / f"alone{s}.pt")])
        for a, b in ((f"co/s{s}.pt", f"alone{s}.pt"), (f"co/s{s}.last.pt", f"alone{s}.last.pt")):
            assert_identical(load(tmp_path / a), load(tmp_path / b), a)  # how the steps ran aside (TIMING)
    assert engine._CAPTURED.fallback is None
    ran = [load(tmp_path / f"co/s{s}.pt")["steps_ran"] for s in (0, 1)]
    n = 2  # steps per epoch: 38 training images in batches of 20, the last one partial (eager)
    assert [(r["epochs"], r["cohort"], r["captured"], r["eager"]) for r in ran[0]] == [([1, 1], 1, 1, 1),
                                                                                      ([2, 3], 2, 2 * (n - 1), 2)]
    assert [(r["epochs"], r["cohort"]) for r in ran[1]] == [([1, 1], 1), ([2, 3], 2)]
    assert all(r["steps"] == "captured" and r["why"] is None and r["capture"] == "auto" for r in ran[0] + ran[1])


def test_what_ran_is_recorded(tmp_path, tiny):
    """Every checkpoint and evaluation says how its steps ran: here eager, on the CPU or by the switch."""
    out = tmp_path / "x.pt"
    train_source.main(["--dataset", "cifar10", *tiny(), "--out", str(out)])
    r = load(out)["steps_ran"]
    assert len(r) == 1 and r[0]["steps"] == "eager" and r[0]["why"] == "cpu" and r[0]["epochs"] == [1, 1]
    assert r[0]["cohort"] == 1 and r[0]["device"] == "cpu" and r[0]["torch"] == str(torch.__version__)
    assert load(str(out)[:-3] + ".last.pt")["steps_ran"] == r
    train_source.main(["--dataset", "cifar10", *tiny(), "--out", str(out), "--capture", "off", "--force"])
    assert load(out)["steps_ran"][0]["why"] == "switch" and load(out)["args"].get("capture") is None
    ev = tmp_path / "x.eval.json"
    evaluate.main(["--ckpt", str(out), "--out", str(ev), "--data-dir", "synthetic", "--limit", "20", "--device",
                   "cpu", "--no-strong", "--no-curve", "--capture", "off"])
    res = json.loads(ev.read_text())
    assert res["steps_ran"]["why"] == "switch" and res["steps_ran"]["precision"] == "fp32"
    assert res["train"]["steps_ran"] == load(out)["steps_ran"]  # the training's record travels to the report


@pytest.mark.parametrize("main, args, says", [
    (train_source.main, ["--capture", "on"], "--capture on needs CUDA"),
    (evaluate.main, ["--capture", "on"], "--capture on needs CUDA"),
    (evaluate.main, ["--precision", "bf16"], "--precision bf16 needs CUDA")])
def test_cuda_only_settings_on_the_cpu_are_refused(tmp_path, tiny, capsys, main, args, says):
    """One line naming the flag, exit status 2, nothing written."""
    if main is train_source.main:
        argv = ["--dataset", "cifar10", *tiny(), "--out", str(tmp_path / "x.pt"), *args]
    else:
        argv = ["--ckpt", str(tmp_path / "x.pt"), "--out", str(tmp_path / "x.eval.json"), "--device", "cpu", *args]
    with pytest.raises(SystemExit) as e:
        engine.run_main(lambda: main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------
# Resume across devices: the optimiser follows this device, not the checkpoint

@pytest.mark.parametrize("written, made", [(True, None), (None, True)])
def test_resume_takes_fused_and_foreach_from_this_device(tmp_path, written, made):
    """A resume state written by an optimiser made with fused=written, loaded into one made with fused=made (a CPU
    run resumed on CUDA, or back): the groups must say made. Catches load_state_dict's copy of the checkpoint's
    flags, which on CUDA gives foreach SGD, whose tensor learning rate breaks the capture."""
    torch.manual_seed(0)
    model = c.build_model("resnet8", 10)
    old = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=written, foreach=not written)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    old.step()
    m = {"model": model, "out": str(tmp_path / "x.pt"), "args": {"seed": 0}, "info": {}}
    engine.atomic_save({"arch": "resnet8", "args": {"seed": 0}, "epoch": 1, "model": model.state_dict(),
                   "optimizer": old.state_dict(), "best": {"score": 1.0}, "rows": [], "steps_ran": [{"x": 1}]},
                  str(tmp_path / "x.last.pt"))
    new = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=made)
    assert engine._start(m, new, 0.1, 3, force=False)[0] == 1
    assert all(g["fused"] is made and g["foreach"] is None for g in new.param_groups)
    assert all(torch.equal(new.state[p]["momentum_buffer"], old.state[p]["momentum_buffer"])
               for p in model.parameters())
    assert m["info"]["steps_ran"] == [{"x": 1}]  # what ran before the resume is kept


def test_make_capture_switch_reaches_every_job():
    """`make CAPTURE=off all` turns capture off in every training, evaluation and crafting command; a wrong value
    stops Make before anything runs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    make = ["make", "-n", "PY=python3", "CHECKED=1", "RUN=/nonexistent/run", "SRC=pgd", "TGT=pgd", "UNFREEZE=12",
            "BASE=pgd"]
    r = subprocess.run([*make, "CAPTURE=off", "all"], cwd=root, capture_output=True, text=True)
    cmds = [line for line in r.stdout.replace("\\\n", " ").splitlines() if line.startswith("python3 ")
            and "report.py" not in line]
    assert r.returncode == 0 and len(cmds) >= 6 and all("--capture off" in line for line in cmds), r.stdout
    r = subprocess.run([*make, "CAPTURE=of", "all"], cwd=root, capture_output=True, text=True)
    assert r.returncode != 0 and "CAPTURE must be auto, on or off, got 'of'" in r.stderr

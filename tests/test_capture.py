"""The captured path's logic on the CPU, with CUDA's graph API replaced by a stand-in that records the Python
function and reruns it on replay. What it checks is everything but CUDA itself: the warm-up steps leave no trace
(weights, BatchNorm statistics and momentum restored), the static input buffers are refilled, the outputs are
rewritten in place, a partial last batch runs eagerly, and a cohort's fork/join keeps each member its own run. On
a GPU, tests/test_gpu.py checks the real thing."""
import contextlib
import copy
import sys

import pytest
import torch

import common as c


class FakeGraph:
    """A stand-in for torch.cuda.CUDAGraph: capture runs nothing for good (the test undoes it), replay reruns."""
    undo = None  # () -> None: restores every tensor the captured function changes, set by the test

    def replay(self):
        new = self.fn()
        for a, b in zip(flat(self.out), flat(new)):
            a.copy_(b)  # a real replay rewrites the outputs captured, in place


def flat(x):
    return [t for v in x for t in flat(v)] if isinstance(x, (list, tuple)) else [x]


@contextlib.contextmanager
def fake_capture(graph):
    snapshot = FakeGraph.undo()
    yield
    frame = sys._getframe(2)  # _capture's frame: the function and its outputs
    graph.fn, graph.out = frame.f_locals["fn"], frame.f_locals["out"]
    snapshot()  # a real capture records kernels without running them: no step happened


class Stream:
    def wait_stream(self, other):
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", fake_capture)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)


def undo_for(models, opts):
    """A snapshot of every tensor of the models and optimisers; calling it returns a function that restores them."""
    def take():
        tensors = [t for m in models for t in m.state_dict().values()]
        tensors += [t for o in opts for st in o.state.values() for t in st.values() if torch.is_tensor(t)]
        saved = [t.clone() for t in tensors]

        def restore():
            with torch.no_grad():
                for t, v in zip(tensors, saved):
                    t.copy_(v)
        return restore
    return take


def sgd(models):
    return [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5) for m in models]


@pytest.mark.parametrize("adv", c.ADV)
def test_captured_cohort_equals_eager_runs(fake_cuda, adv):
    torch.manual_seed(0)
    models = [c.build_model("resnet8", 10) for _ in range(2)]
    refs = copy.deepcopy(models)
    opts, ref_opts = sgd(models), sgd(refs)
    for m in models + refs:
        c.set_train_mode(m)
    FakeGraph.undo = undo_for(models, opts)
    step = c.make_step(models, opts, adv, c.EPS, steps=2, capture=True)
    x, y = c.synthetic("cifar10", True, 70)
    x = x.float() / 255
    for lo, hi in ((0, 16), (16, 32), (32, 48), (48, 56), (0, 16)):  # 8 images: a partial batch, then full again
        bs = [(x[lo:hi], y[lo:hi]), (x[lo + 1:hi + 1], y[lo + 1:hi + 1])]  # each member its own batch
        got = [tuple(t.clone() for t in out) for out in step(bs, [None, None])]
        want = [c.train_step(m, o, xb, yb, adv, c.EPS, steps=2) for m, o, (xb, yb) in zip(refs, ref_opts, bs)]
        for g, w in zip(got, want):
            assert all(torch.equal(a, b) for a, b in zip(g, w)), (adv, lo)
    for m, r in zip(models, refs):  # weights and BatchNorm statistics: the warm-up and the capture left no trace
        assert all(torch.equal(p, q) for p, q in zip(m.state_dict().values(), r.state_dict().values()))
    for o, r in zip(opts, ref_opts):  # momentum too: zeroed after the warm-up, then as eager's first step
        for p, q in zip(o.param_groups[0]["params"], r.param_groups[0]["params"]):
            assert torch.equal(o.state[p]["momentum_buffer"], r.state[q]["momentum_buffer"])


def test_captured_evaluation_equals_eager(fake_cuda):
    torch.manual_seed(0)
    model = c.build_model("resnet8", 10)
    FakeGraph.undo = undo_for([model], [])
    x, y = c.synthetic("cifar10", True, 50)
    for kind in (None, "fgsm", "pgd"):
        f, e = c.eval_step(model, kind, c.EPS, capture=True), c.eval_step(model, kind, c.EPS, capture=False)
        for lo, hi in ((0, 20), (20, 40), (40, 50)):  # a graph per batch size, replayed on new inputs
            xb = x[lo:hi].float() / 255
            assert torch.equal(f(xb, y[lo:hi]), e(xb, y[lo:hi])), kind

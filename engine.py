"""The engine under the science of common.py: the training loop of a cohort (one or more models trained by one
process), its steps captured as CUDA graphs where they can be (eager elsewhere, with the reason recorded), the captured
evaluation, checkpoints written atomically, resume, output locks, progress lines and the scripts' error handling.

A researcher adding a training objective, an attack or a transfer strategy edits common.py and never needs to read
this file. Like common.py it does nothing at import: no device work, file I/O, argument parsing or seeding.
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

import torch

import common as c

# ----------------------------------------------------------------------------------------------------------
# The scripts' error handling

def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def run_main(main, interrupted="interrupted; run the same command again to resume from the last completed epoch "
                               "(X.last.pt beside each output)"):
    """Run a script's main(): bad input becomes one line on stderr and exit status 2, never a traceback; Ctrl-C
    says what was kept and how to go on (`interrupted`, the script's own words)."""
    try:
        main()
    except c.UsageError as e:
        die(str(e))
    except KeyboardInterrupt:
        die(interrupted)
    except OSError as e:  # a full disk outside atomic_save (a log line): one line too; what was saved is kept
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        die(f"{e.strerror}" + (f" ({e.filename})" if e.filename else "") + "; the last saved state is kept: free "
            "some space and run the same command again")



# ----------------------------------------------------------------------------------------------------------
# Captured evaluation

def eval_step(model, kind=None, eps=c.EPS, alpha=None, steps=7, random_start=False, capture=None):
    """f(x, y) -> bool tensor: which inputs the model classifies correctly, clean or under a white-box attack
    with the true labels. Captured per batch size where it can be (capture: auto, on or off; None: the
    process's, see capturing), else eager."""
    def eager(x, y):
        if callable(kind):  # an evaluation column's attack, its settings bound: f(model, x, y) -> inputs
            x = kind(model, x, y)
        elif kind:
            x = c.attack(model, x, y, kind, eps, alpha, steps, random_start)
        return c.predict(model, x) == y
    mode = capture or _CAPTURE.get()
    why = why_eager(mode, _device_of(model), random_start)  # a random start differs on every call: not replayable
    graphs = _CAPTURED.evals.setdefault(model, {})

    def step(x, y):
        if why or _CAPTURED.fallback:
            return eager(x, y)
        key = (kind, eps, alpha, steps, len(y), c._PRECISION.get())
        if key not in graphs:  # attacks leave the model as found: nothing to restore after the warm-up
            xs, ys = x.clone(), y.clone()
            what = f"{getattr(kind, 'name', kind) or 'clean'} evaluation graph (batch {len(y)})"

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


def accuracy(model, x, y, batch_size=500, kind=None, eps=c.EPS, steps=7, random_start=False, alpha=None):
    """Accuracy (%) on device-resident uint8 data, clean or under a white-box attack with the true labels."""
    f = eval_step(model, kind, eps, alpha, steps, random_start)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for xb, yb in c.batches(x, y, batch_size):
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
    return c._setting(_CAPTURE, mode)


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


def make_step(models, opts, adv, eps=c.EPS, steps=7, random_start=False, label_fix=True, capture=None):
    """The training step of a cohort: step(batches, gens) -> [(loss, clean correct, adv correct)], one entry per
    member, for batches [(x, y)] and random-start generators gens, one per member. step.ran says how the steps
    ran: why they are eager (None: captured) and how many ran each way.

    Eager: train_step for each member in turn, exactly a separate run's computation. Captured (capture auto or on,
    on CUDA): all members in one graph; a random start is drawn from each member's own generator, which a replay
    cannot redraw, so --random-start stays eager, as does an objective that draws random numbers (its table's
    `draws`).
    """
    mode = capture or _CAPTURE.get()
    why = why_eager(mode, _device_of(models[0]), random_start)
    if why is None and c.OBJECTIVES[adv].draws:  # a replay would reuse one draw: eager, the reason recorded
        why = f"{adv} draws random numbers"
    ran = {"why": why, "capture": mode, "captured": 0, "eager": 0, "cohort": len(models)}

    def eager(batches, gens):
        return [c.train_step(m, o, x, y, adv, eps, steps, random_start, label_fix, g)
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
                        outs.append(c.train_step(m, o, x, y, adv, eps, steps, False, label_fix))
                for s in streams:
                    main.wait_stream(s)  # ... and join, inside the graph
                return outs
            state = [t for m in models for t in list(m.parameters()) + list(m.buffers())]
            refs, ref_opts = copy.deepcopy((models, opts))  # the members as they are, for the self-check

            def check(out):  # the first replay against an eager step of the copies, same batch, same state
                base = [{k: [t.clone() for t in v] for k, v in _member_state(m, o).items()}
                        for m, o in zip(refs, ref_opts)]
                want = [c.train_step(m, o, x, y, adv, eps, steps, False, label_fix)
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
# Checkpoints: plain self-describing dicts, written atomically (name.tmp, then os.replace).

def atomic_save(obj, path):
    """Write obj to path.tmp (a str as text, a dict or list to .json as JSON, else torch.save), then rename it over
    path. When the write fails (a full disk: torch.save raises a RuntimeError,
    json an OSError) path.tmp is removed and path keeps its last good state: a one-line UsageError. Ctrl-C too
    leaves no path.tmp."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    try:
        if isinstance(obj, str) or isinstance(obj, (dict, list)) and path.endswith(".json"):
            with open(tmp, "w") as f:
                f.write(obj if isinstance(obj, str) else json.dumps(obj, indent=1) + "\n")
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
        raise c.UsageError(f"could not write {path} ({e.strerror or e}; {free:,.0f} MiB free on its disk); the "
                           f"partial file is removed and {os.path.basename(path)} is left as it was (its last saved "
                           f"state); free some space and run the same command again") from None


def check_writable(path, flag="--out"):
    """Fail before any work when `path` could not be written (a run whose result cannot be saved is lost). Creates
    nothing: the nearest existing folder above it must be a writable folder."""
    d = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(d):
        if os.path.lexists(d):
            raise c.UsageError(f"{flag} {path}: {d} is a file, not a folder; pass another path")
        d = os.path.dirname(d)
    try:  # an unnamed temporary file: a real write, and nothing left behind
        tempfile.TemporaryFile(dir=d).close()
    except OSError as e:
        raise c.UsageError(f"{flag} {path}: cannot write into {d} ({e.strerror or e}); pass a writable path")


@contextlib.contextmanager
def output_lock(path, flag="--out"):
    """An exclusive lock on `path` for the whole run (flock on path.lock, released when the process ends, even by
    kill -9): two runs on one output cannot interleave; the second fails at once naming the first. The lock file
    is removed when the run ends (one left by a killed run is free and taken over): a lock is held only on the
    file at path.lock itself, so a run that opened a file removed meanwhile tries again."""
    import fcntl
    check_writable(path, flag)
    while True:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            f = open(path + ".lock", "a+")
        except OSError as e:
            raise c.UsageError(f"{flag} {path}: cannot write there ({e.strerror or e}); pass a writable path")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise c.UsageError(f"{flag} {path} is being written by another run ({holder}); wait for it to end or "
                               f"stop it")
        try:
            if os.stat(path + ".lock").st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()  # the holder ended and removed the file between our open and our lock: take the new one
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}: {' '.join(sys.argv)}")
    f.flush()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path + ".lock")  # while still held: whoever opens it next sees it gone and retries
        f.close()


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
        raise c.UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise c.UsageError(f"--device {name} asked for but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise c.UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
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
    p.add_argument("--check", action="store_true", help="check the flags and stop: nothing is read, trained or "
                   "written (make checks every stage's command this way before its first job)")
    return p


def check_training_args(a):
    if a.epochs < 1 or a.batch_size < 1 or (a.limit is not None and a.limit < 20):
        raise c.UsageError("--epochs and --batch-size must be positive and --limit at least 20")
    if not (a.eps >= 0 and a.steps >= 1 and a.lr > 0 and a.wd >= 0) or math.inf in (a.eps, a.lr, a.wd):
        raise c.UsageError(f"--eps and --wd must be non-negative, --steps and --lr positive "
                         f"(got eps={a.eps}, steps={a.steps}, lr={a.lr}, wd={a.wd})")
    if len(set(a.seed)) != len(a.seed):
        raise c.UsageError(f"--seed lists a seed twice ({' '.join(map(str, a.seed))})")
    if any(s < 0 for s in a.seed):
        raise c.UsageError(f"--seed must be non-negative, got {' '.join(map(str, a.seed))}")
    bad = [m for m in a.milestones if not 0 < m <= 1]
    if bad:
        raise c.UsageError(f"--milestones {' '.join(f'{m:g}' for m in a.milestones)}: milestones are fractions of "
                         f"--epochs in (0, 1], e.g. --milestones 0.5 0.75 for epochs 100 and 150 of 200")
    pick_device(a.device)


def member_paths(template, members, flag="--out"):
    """The member's output: the template (--out, or the script's default) filled with its values ({seed},
    {unfreeze}, ...). Several members need distinct paths, so a fixed --out is refused for them."""
    try:
        paths = [template.format(**m) for m in members]
    except (KeyError, IndexError, ValueError) as e:
        raise c.UsageError(f"{flag} {template!r}: unknown or malformed field {e}; use {{{'}, {'.join(members[0])}}}")
    if len(set(paths)) != len(paths):
        raise c.UsageError(f"{flag} {template} names one file for {len(paths)} models; with several --seed or "
                         f"--unfreeze values give a template, e.g. {flag} 'runs/x/m-{{unfreeze}}_s{{seed}}.pt'")
    if not all(p.endswith(".pt") for p in paths):
        raise c.UsageError(f"{flag} must name a .pt file, got {template!r}")
    return paths


def member(model, params, a, out, info, **values):
    """A cohort member for fit: its model, the parameters that train, its output, its recorded arguments (the
    script's flags with this member's own values: seed, unfreeze, ...) and what its checkpoint says of it."""
    args = {k: v for k, v in vars(a).items() if k not in ("device", "force", "capture", "check")}  # how, not what
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


def _fmt_time(s):
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def _args_diff(old, new):
    """The recorded arguments that differ, as flags. Where the files lie is no argument: --out is where the output is
    now, and --init counts relative to it, so that a moved (or renamed) RUN folder resumes."""
    def rel(a):
        out = os.path.dirname(a.get("out") or "")
        return {**a, "out": None, "init": a.get("init") and os.path.relpath(a["init"], out or ".")}
    old, new = rel(old), rel(new)
    return ", ".join(f"--{k.replace('_', '-')} {old.get(k)} -> {v}" for k, v in new.items() if old.get(k) != v)


def _start(m, opt, lr, epochs, force):
    """Where member m starts: (first epoch, best so far, rows), from its resume state X.last.pt if there is one
    with the same arguments; None if its output is finished with these arguments (and newer than its init)."""
    out, last = m["out"], m["out"][:-3] + ".last.pt"
    init = m["info"].get("init")
    newer = lambda p: init and os.path.getmtime(init) > os.path.getmtime(p)  # noqa: E731 (its source retrained)
    if os.path.exists(out) and not force and not newer(out):
        diff = _args_diff(c.load_checkpoint(out, ours=True)["args"], m["args"])
        if diff:
            raise c.UsageError(f"{out} exists, trained with other arguments ({diff}); pass another --out, or --force "
                             f"to replace it")
        return None
    if force or not os.path.exists(last) or newer(last):
        return 0, {"score": -1.0}, []
    ck = c.load_checkpoint(last, "resume state", ours=True)
    if _args_diff(ck["args"], m["args"]):
        raise c.UsageError(f"{last} is a run with other arguments ({_args_diff(ck['args'], m['args'])}); rerun with "
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
        raise c.UsageError(f"--capture on needs CUDA (this run is on {device}); use --capture auto or off")
    for m in members:
        check_writable(m["out"])
        if m["info"]["num_classes"] != c.NUM_CLASSES[dataset]:
            raise c.UsageError(f"the model has {m['info']['num_classes']} classes but {dataset} has "
                             f"{c.NUM_CLASSES[dataset]}")
    (xtr, ytr), (xva, yva) = c.load_data(dataset, data_dir, limit)  # bad data is reported before anything is written
    xtr, ytr, xva, yva = (t.to(device) for t in (xtr, ytr, xva, yva))
    if not cuda and len(xtr) * epochs >= 1_000_000:  # e.g. the protocol's 47,500 images x 200 epochs
        print(f"warning: {len(xtr):,} images x {epochs} epochs on the CPU take days; for a try on the CPU: --arch "
              f"resnet8 --epochs 2 --limit 1000 --data-dir synthetic (README, 'One cell, ad hoc')", file=sys.stderr,
              flush=True)
    # A fixed training batch, attacked with PGD each epoch: FGSM training's catastrophic overfitting shows as
    # this accuracy collapsing while FGSM accuracy stays high (Wong et al. 2020).
    n_mon = min(256, len(xtr) // 8)
    # the validation attack, named in the logs: the objective's (FGSM with predicted labels under the fix)
    val = c.OBJECTIVES[adv].validate
    val_attack = "fgsm(pred. labels)" if val == "fgsm" and label_fix else f"{val}(true labels)"
    xmon, ymon = xtr[:n_mon], ytr[:n_mon]  # uint8, as accuracy() expects: it scales by 1/255 itself
    spent = [0.0]  # seconds of the epochs trained in this process, validation included: the time-left estimate

    def end_epoch(m, epoch, lr, dt, k, first):
        """Validate member m, keep its best weights, save its resume state and log its epoch."""
        loss, tr_clean, tr_adv = (m["tot"] / len(xtr) * torch.tensor([1.0, 100, 100], device=device)).tolist()
        net = m["model"]
        val_clean = accuracy(net, xva, yva)
        if val == "fgsm" and label_fix:  # the attack the model trains on: FGSM crafted with its own predictions
            right = sum(int((c.predict(net, c.fgsm(net, xb, c.predict(net, xb), eps)) == yb).sum())
                        for xb, yb in c.batches(xva, yva, 500))
            val_adv = 100 * right / len(xva)
        else:
            val_adv = accuracy(net, xva, yva, kind=val, eps=eps, steps=steps) if val else None
        mon_pgd = accuracy(net, xmon, ymon, kind="pgd", eps=eps, steps=steps) if val else None
        score = val_clean if val_adv is None else (val_clean + val_adv) / 2
        row = {"epoch": epoch + 1, "lr": lr, "loss": loss, "train_clean": tr_clean, "val_clean": val_clean,
               "seconds": dt, "images_per_s": len(xtr) / dt}
        if val:
            row.update(train_adv=tr_adv, val_adv=val_adv, val_attack=val_attack, train_batch_pgd=mon_pgd)
        m["rows"].append(row)
        if score > m["best"]["score"]:
            m["best"] = {"score": score, "epoch": epoch + 1, "metrics": row,
                         "model": {n: v.detach().cpu().clone() for n, v in net.state_dict().items()}}
        _record(m, step, epoch, k, device)
        atomic_save({**m["info"], "args": m["args"], "epoch": epoch + 1, "model": net.state_dict(),
                     "optimizer": m["opt"].state_dict(), "best": m["best"], "rows": m["rows"]},
                    m["out"][:-3] + ".last.pt")
        # rewritten whole each epoch: a resumed log has no duplicates
        atomic_save("".join(json.dumps(r) + "\n" for r in m["rows"]), m["out"][:-3] + ".jsonl")
        adv_txt = "" if not val else f" adv {tr_adv:5.1f}%"
        vadv_txt = "" if not val else f" {val_attack} {val_adv:5.1f}% | train-batch pgd {mon_pgd:5.1f}%"
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
            todo.append(m)
        for m in todo:  # the cohort is the members that train, not those already finished
            if m["start"]:
                say(m, f"resuming {m['out']} after epoch {m['start']}/{epochs}")
            n_par = sum(p.numel() for p in m["params"])
            say(m, f"{m['info']['arch']} on {dataset} ({len(xtr)} train / {len(xva)} val), {adv} training, "
                   f"{c.eps_str(eps)}, {n_par:,} of {sum(p.numel() for p in m['model'].parameters()):,} parameters "
                   f"train, device {device}" + (f", cohort of {len(todo)}" if len(todo) > 1 else ""))
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
                c.set_train_mode(m["model"], freeze_bn)
                set_lr(m["opt"], lr_e)
                m["tot"] = torch.zeros(3, device=device)
                m["bad"] = torch.tensor(-1, device=device)  # the first step with a non-finite loss, kept on the device
                # every epoch reproducible on its own: shuffle, crops, flips and random starts; exact resume
                gens.append(torch.Generator(device).manual_seed(m["args"]["seed"] * 100003 + epoch))
            n_steps, t_shown = math.ceil(len(xtr) / batch_size), time.time()
            for i, bs in enumerate(zip(*(c.batches(xtr, ytr, batch_size, g, train=True) for g in gens))):
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
            raise c.UsageError("; ".join(lost))
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


# ----------------------------------------------------------------------------------------------------------
# Catastrophic overfitting, judged on what the training loop records every epoch.

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

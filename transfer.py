"""Transfer a CIFAR-100 source to CIFAR-10: a fresh 10-class head, then one of the paper's three strategies
(Sec. 2.1), trained naturally or adversarially on the target.

    python transfer.py --src pgd --tgt pgd --unfreeze 12           # -> runs/paper/transfer/pgd-pgd-12_s0.pt
    python transfer.py --src pgd --tgt pgd --unfreeze 1 12 56      # the three strategies trained together
    python transfer.py --src pgd --tgt nat --unfreeze 1 b3 12 b18 56   # a depth sweep (make depth), one cohort

--unfreeze 1: only the new head trains; 12: the whole last stage (layer3, 18 convs) and the head, as the
authors' code did (the paper's text says "the last block"); 56: everything, the source only initialises.
The depths between are bK: the last K of ResNet56's 27 residual blocks and the head (K = 1..27; the paper's
1, 12, 56 are K = 0, 9 and 28, the stem counted last, and keep their own names; README: the table of depths).
Frozen layers' BatchNorm statistics keep adapting to CIFAR-10 as in the authors' runs (--freeze-bn fixes
them). Schedule (authors' job files): 50 epochs, SGD lr 0.1, momentum 0.9, x0.1 every 20 epochs, wd 5e-5.
Several --unfreeze and --seed values train together (a cohort), each writing the files its own run would.
"""
import argparse

import torch.nn as nn

import common as c
import engine


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", choices=list(c.OBJECTIVES), required=True, help="how the CIFAR-100 source was trained")
    p.add_argument("--tgt", choices=list(c.OBJECTIVES), required=True, help="the training objective on CIFAR-10 "
                   "(common.OBJECTIVES): " + "; ".join(f"{k}: {o.about}" for k, o in c.OBJECTIVES.items()))
    p.add_argument("--unfreeze", nargs="+", required=True,
                   help="1, 12 or 56 (the paper's strategies), bK (the last K of the 27 residual blocks and the "
                        "head, K = 1..27 but 9) or a named strategy (common.STRATEGIES: "
                        + "; ".join(f"{k}: {s.about}" for k, s in c.STRATEGIES.items()) + "); several train together")
    p.add_argument("--init", default="runs/paper/source/cifar100_{src}_s{seed}.pt",
                   help="source checkpoint, X.pt of train_source.py ({src}, {seed} are filled in)")
    p.add_argument("--arch", default=None, help="must match the source's (taken from it by default)")
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="keep frozen layers' BatchNorm statistics fixed (the authors let them adapt)")
    engine.add_training_args(p, epochs=50, wd=5e-5, milestones=[0.4, 0.8],
                        out="runs/paper/transfer/{src}-{tgt}-{unfreeze}_s{seed}.pt")
    return p.parse_args(argv)


def load_source(path, a):
    """The source checkpoint, checked to be a CIFAR-100 ResNet trained with --src (not its resume state)."""
    ck = c.load_checkpoint(path, "source checkpoint --init")
    if "optimizer" in ck:
        raise c.UsageError(f"--init {path} is a resume state, not the selected model; pass "
                           f"{path.replace('.last.pt', '.pt')}, the best-validation checkpoint")
    if not ck["arch"].startswith("resnet") or ck["num_classes"] != 100:
        raise c.UsageError(f"--init {path} is a {ck['arch']} with {ck['num_classes']} classes; transfer needs a "
                           f"CIFAR-100 ResNet source from train_source.py --dataset cifar100")
    if a.arch and a.arch != ck["arch"]:
        raise c.UsageError(f"--arch {a.arch} does not match the source {path}, a {ck['arch']}")
    if ck.get("adv", a.src) != a.src:
        raise c.UsageError(f"--init {path} was trained with --adv {ck['adv']}, not --src {a.src}; "
                           f"pass the matching source")
    ck["said"] = (f"source {path}: {ck['arch']}, {ck['adv']} training, epoch {ck.get('epoch')} of "
                  f"{ck.get('args', {}).get('epochs')}, val "
                  f"{ck.get('metrics', {}).get('val_clean', float('nan')):.1f}% clean")
    return ck


def main(argv=None):
    a = get_args(argv)
    depths = [c.parse_unfreeze(u) for u in a.unfreeze]  # 1, 12, 56 stay ints, as recorded before depths existed
    engine.check_training_args(a)
    if len(set(depths)) != len(depths):
        raise c.UsageError(f"--unfreeze lists a depth twice ({' '.join(a.unfreeze)})")
    fields = [dict(src=a.src, tgt=a.tgt, unfreeze=u, seed=s) for s in a.seed for u in depths]
    outs = engine.member_paths(a.out, fields)
    if a.check:  # the depths against --arch where it is given (make gives it); else against the source, when run
        model = a.arch and c.build_model(a.arch, 100)
        for u in depths if model else ():
            try:
                c.freeze(model, u)
            except c.UsageError as e:
                raise c.UsageError(f"--arch {a.arch}: {e}")
        return
    inits = [a.init.format(src=a.src, seed=f["seed"]) for f in fields]
    sources = {p: load_source(p, a) for p in dict.fromkeys(inits)}
    members = []
    for f, out, init in zip(fields, outs, inits):
        ck = sources[init]
        model = c.model_from_checkpoint(ck, what=f"--init {init}")
        c.torch.manual_seed(f["seed"])
        model.linear = nn.Linear(model.linear.in_features, 10)  # the fresh CIFAR-10 head, default init (authors')
        params = c.freeze(model, f["unfreeze"])
        info = {"arch": ck["arch"], "num_classes": 10, "role": "transfer", "src": a.src, "tgt": a.tgt,
                "unfreeze": f["unfreeze"], "init": init,  # and how the source was trained: its departures are ours
                "source_train": {**(ck.get("args") or {}), **{k: ck.get(k) for k in ("arch", "n_train", "n_val")}}}
        members.append(engine.member(model, params, a, out, info, seed=f["seed"], unfreeze=f["unfreeze"], init=init,
                                arch=ck["arch"]))
    who = engine._who(members)
    for ck in sources.values():
        print(f"[{who}] {ck['said']}")
    print(f"[{who}] transfer {a.src} -> {a.tgt}: "
          + "; ".join(f"unfreeze {u}: {c.describe_unfreeze(u)} trains" for u in depths), flush=True)
    engine.fit(members, dataset="cifar10", adv=a.tgt, freeze_bn=a.freeze_bn, **engine.fit_options(a))


if __name__ == "__main__":
    engine.run_main(main)

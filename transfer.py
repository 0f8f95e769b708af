"""Transfer a CIFAR-100 source to CIFAR-10: a fresh 10-class head, then one of the paper's three strategies
(Sec. 2.1), trained naturally or adversarially on the target.

    python transfer.py --src pgd --tgt pgd --unfreeze 12

--unfreeze 1: only the new head trains; 12: the whole last stage (layer3, 18 convs) and the head, as the
authors' code did (the paper's text says "the last block"); 56: everything, the source only initialises.
Frozen layers' BatchNorm statistics keep adapting to CIFAR-10 as in the authors' runs (--freeze-bn fixes
them). Schedule (authors' job files): 50 epochs, SGD lr 0.1, momentum 0.9, x0.1 every 20 epochs, wd 5e-5.
"""
import argparse

import torch.nn as nn

import common as c


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", choices=c.ADV, required=True, help="how the CIFAR-100 source was trained")
    p.add_argument("--tgt", choices=c.ADV, required=True, help="natural, FGSM or PGD training on CIFAR-10")
    p.add_argument("--unfreeze", type=int, required=True, help="1, 12 or 56 (the paper's strategies)")
    p.add_argument("--init", default=None, help="source checkpoint (default: where the Makefile puts it)")
    p.add_argument("--arch", default=None, help="must match the source's (taken from it by default)")
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="keep frozen layers' BatchNorm statistics fixed (the authors let them adapt)")
    c.add_training_args(p, epochs=50, wd=5e-5, milestones=[0.4, 0.8], out=None)
    a = p.parse_args(argv)
    a.init = a.init or f"runs/paper/source/cifar100_{a.src}_s{a.seed}.pt"
    a.out = a.out or f"runs/paper/transfer/{a.src}-{a.tgt}-{a.unfreeze}_s{a.seed}.pt"
    a.adv = a.tgt
    return a


def main(argv=None):
    a = get_args(argv)
    c.check_training_args(a)
    if a.unfreeze not in c.UNFREEZE:
        raise c.UsageError(f"--unfreeze must be 1, 12 or 56 (the paper's three strategies), got {a.unfreeze}")
    ck = c.load_checkpoint(a.init, "source checkpoint --init")
    if not ck["arch"].startswith("resnet") or ck["num_classes"] != 100:
        raise c.UsageError(f"--init {a.init} is a {ck['arch']} with {ck['num_classes']} classes; transfer needs a "
                           f"CIFAR-100 ResNet source from train_source.py --dataset cifar100")
    if a.arch and a.arch != ck["arch"]:
        raise c.UsageError(f"--arch {a.arch} does not match the source {a.init}, a {ck['arch']}")
    if ck.get("args", {}).get("adv", a.src) != a.src:
        raise c.UsageError(f"--init {a.init} was trained with --adv {ck['args']['adv']}, not --src {a.src}; "
                           f"pass the matching source")
    a.arch = ck["arch"]
    model = c.model_from_checkpoint(ck)
    c.torch.manual_seed(a.seed)
    model.linear = nn.Linear(model.linear.in_features, 10)  # the fresh CIFAR-10 head
    nn.init.kaiming_normal_(model.linear.weight)
    params = c.freeze(model, a.unfreeze)
    print(f"transfer {a.src} -> {a.tgt}, unfreeze {a.unfreeze}: {c.UNFREEZE[a.unfreeze]} trains")
    c.fit(model, params, a, "cifar10", {"arch": a.arch, "num_classes": 10, "src": a.src, "unfreeze": a.unfreeze})


if __name__ == "__main__":
    c.run_main(main)

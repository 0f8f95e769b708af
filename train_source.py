"""Train a source on CIFAR-100, or with --dataset cifar10 a baseline without transfer (R_nat, R_fgsm, R_pgd).

    python train_source.py --dataset cifar100 --adv pgd             # -> runs/paper/source/cifar100_pgd_s0.pt
    python train_source.py --dataset cifar10 --adv pgd --seed 0 1 2  # three seeds trained together (a cohort)

Schedule (authors' job files; the paper gives none): 200 epochs of SGD lr 0.1, momentum 0.9, x0.1 at epochs 100
and 150; weight decay 5e-5 for natural and 1e-5 for adversarial training (their runs left the flag at its
default). Adversarial training is the paper's mixed objective (Sec. 2.3), 100 clean + 100 adversarial images.
"""
import argparse

import common as c
import engine

OUT = "runs/paper/{role}/{dataset}_{adv}_s{seed}.pt"


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["cifar100", "cifar10"], default="cifar100")
    p.add_argument("--adv", choices=list(c.OBJECTIVES), default="nat",
                   help="the training objective (common.OBJECTIVES): "
                   + "; ".join(f"{k}: {o.about}" for k, o in c.OBJECTIVES.items()))
    p.add_argument("--arch", default="resnet56", help="resnet56 (the paper's R), resnet20, ...")
    engine.add_training_args(p, epochs=200, wd=None, milestones=[0.5, 0.75], out=OUT)
    a = p.parse_args(argv)
    a.wd = a.wd if a.wd is not None else (5e-5 if a.adv == "nat" else 1e-5)
    return a


def main(argv=None):
    a = get_args(argv)
    engine.check_training_args(a)
    role = "source" if a.dataset == "cifar100" else "baseline"
    fields = [dict(role=role, dataset=a.dataset, adv=a.adv, seed=s) for s in a.seed]
    outs = engine.member_paths(a.out, fields)
    if a.check:
        c.build_model(a.arch, c.NUM_CLASSES[a.dataset])  # an --arch it cannot build is refused too
        return
    members = []
    for f, out in zip(fields, outs):
        c.torch.manual_seed(f["seed"])
        model = c.build_model(a.arch, c.NUM_CLASSES[a.dataset])
        info = {"arch": a.arch, "num_classes": c.NUM_CLASSES[a.dataset], "role": role}
        members.append(engine.member(model, list(model.parameters()), a, out, info, seed=f["seed"]))
    engine.fit(members, dataset=a.dataset, adv=a.adv, **engine.fit_options(a))


if __name__ == "__main__":
    engine.run_main(main)

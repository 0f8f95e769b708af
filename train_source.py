"""Train a source on CIFAR-100, or with --dataset cifar10 a baseline without transfer (R_nat, R_fgsm, R_pgd).

    python train_source.py --dataset cifar100 --adv pgd --out runs/paper/source/cifar100_pgd_s0.pt

Schedule (authors' job files; the paper gives none): 200 epochs of SGD lr 0.1, momentum 0.9, x0.1 at epochs 100
and 150; weight decay 5e-5 for natural and 1e-5 for adversarial training (their runs left the flag at its
default). Adversarial training is the paper's mixed objective (Sec. 2.3), 100 clean + 100 adversarial images.
"""
import argparse

import common as c


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["cifar100", "cifar10"], default="cifar100")
    p.add_argument("--adv", choices=c.ADV, default="nat", help="natural, FGSM or PGD-7 adversarial training")
    p.add_argument("--arch", default="resnet56", help="resnet56 (the paper's R), resnet20, ...")
    c.add_training_args(p, epochs=200, wd=None, milestones=[0.5, 0.75], out=None)
    a = p.parse_args(argv)
    a.out = a.out or f"runs/paper/{'source' if a.dataset == 'cifar100' else 'baseline'}/{a.dataset}_{a.adv}_s{a.seed}.pt"
    a.wd = a.wd if a.wd is not None else (5e-5 if a.adv == "nat" else 1e-5)
    return a


def main(argv=None):
    a = get_args(argv)
    c.check_training_args(a)
    c.torch.manual_seed(a.seed)
    model = c.build_model(a.arch, c.NUM_CLASSES[a.dataset])
    c.fit(model, list(model.parameters()), a, a.dataset, {"arch": a.arch, "num_classes": c.NUM_CLASSES[a.dataset]})


if __name__ == "__main__":
    c.run_main(main)

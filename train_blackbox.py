"""Train the black-box attack source: DenseNet121 on CIFAR-10, naturally (the authors' 93.2% clean).

    python train_blackbox.py --out runs/paper/blackbox/densenet121_s0.pt

Growth rate 12 as in the authors' code (the standard DenseNet121 has 32: --growth 32). Schedule as the
sources: 200 epochs, SGD lr 0.1, momentum 0.9, x0.1 at 100 and 150, weight decay 5e-5. evaluate.py --craft
then crafts the black-box examples from it once, for every evaluation to reuse.
"""
import argparse

import common as c


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="densenet121", choices=["densenet121"])
    p.add_argument("--growth", type=int, default=12, help="DenseNet growth rate (authors 12, standard 32)")
    c.add_training_args(p, epochs=200, wd=5e-5, milestones=[0.5, 0.75], out=None)
    a = p.parse_args(argv)
    a.out = a.out or f"runs/paper/blackbox/densenet121_s{a.seed}.pt"
    a.adv = "nat"
    return a


def main(argv=None):
    a = get_args(argv)
    c.check_training_args(a)
    if a.growth < 1:
        raise c.UsageError(f"--growth must be positive, got {a.growth}")
    c.torch.manual_seed(a.seed)
    model = c.build_model(a.arch, 10, a.growth)
    c.fit(model, list(model.parameters()), a, "cifar10", {"arch": a.arch, "num_classes": 10, "growth": a.growth})


if __name__ == "__main__":
    c.run_main(main)

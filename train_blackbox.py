"""Train the black-box attack source: DenseNet121 on CIFAR-10, naturally (the authors' 93.2% clean).

    python train_blackbox.py                      # -> runs/paper/blackbox/densenet121_s0.pt
    python evaluate.py --craft-from runs/paper/blackbox/densenet121_s0.pt --out runs/paper/blackbox/examples.pt

Growth rate 12 as in the authors' code (the standard DenseNet121 has 32: --growth 32). Schedule as the
sources: 200 epochs, SGD lr 0.1, momentum 0.9, x0.1 at 100 and 150, weight decay 5e-5. `evaluate.py
--craft-from` then crafts the black-box FGSM and PGD examples from it once, for every evaluation to reuse.
"""
import argparse

import common as c
import engine


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="densenet121", choices=["densenet121"])
    p.add_argument("--growth", type=int, default=12, help="DenseNet growth rate (authors 12, standard 32)")
    engine.add_training_args(p, epochs=200, wd=5e-5, milestones=[0.5, 0.75],
                        out="runs/paper/blackbox/densenet121_s{seed}.pt")
    return p.parse_args(argv)


def main(argv=None):
    a = get_args(argv)
    engine.check_training_args(a)
    if a.growth < 1:
        raise c.UsageError(f"--growth must be positive, got {a.growth}")
    fields = [dict(seed=s) for s in a.seed]
    outs = engine.member_paths(a.out, fields)
    if a.check:
        return
    members = []
    for f, out in zip(fields, outs):
        c.torch.manual_seed(f["seed"])
        model = c.build_model(a.arch, 10, a.growth)
        info = {"arch": a.arch, "num_classes": 10, "growth": a.growth, "role": "blackbox"}
        members.append(engine.member(model, list(model.parameters()), a, out, info, seed=f["seed"]))
    engine.fit(members, dataset="cifar10", adv="nat", **engine.fit_options(a))


if __name__ == "__main__":
    engine.run_main(main)

"""A stand-in for the Python interpreter in Makefile tests: `fakepy.py SCRIPT ARGS` writes the outputs the real
script would (every member of a training cohort, the evaluation or examples file, the report) as empty files,
and appends "SCRIPT OUT" to $FAKEPY_LOG. No torch, no training: a whole grid in a second. Make's check.py passes
(or, with FAKEPY_CHECK=1, runs for real)."""
import argparse
import itertools
import os
import sys

script, argv = os.path.basename(sys.argv[1]), sys.argv[2:]
if script == "check.py":  # Make's check of every stage's command: the real one where a test asks for it
    if os.environ.get("FAKEPY_CHECK"):
        os.execv(sys.executable, [sys.executable, sys.argv[1], *argv])
    sys.exit(0)
if script == "common.py":  # Make asks for the tables' names: the stand-in has none (no torch), so Make skips
    sys.exit(1)  # its name check, as for an interpreter not built yet; test_make.py checks names with the real one
p = argparse.ArgumentParser()
for flag in ("--out", "--src", "--tgt", "--dataset", "--adv"):
    p.add_argument(flag)
p.add_argument("--seed", nargs="+", default=["0"])
p.add_argument("--unfreeze", nargs="+", default=[None])
a, _ = p.parse_known_args(argv)
if script == "report.py":
    outs = [os.path.join(a.out, "report.md")]
else:
    outs = sorted({a.out.format(src=a.src, tgt=a.tgt, unfreeze=u, seed=s)
                   for u, s in itertools.product(a.unfreeze, a.seed)})
for o in outs:
    os.makedirs(os.path.dirname(o), exist_ok=True)
    open(o, "w").close()
with open(os.environ["FAKEPY_LOG"], "a") as f:
    f.write(f"{script} {a.out}\n")

"""An interpreter for tests/test_workbench.py: `toypy.py SCRIPT ARGS` registers a toy training objective, a toy
evaluation column and a toy transfer strategy in common.py's tables at run time, then runs SCRIPT as `python SCRIPT
ARGS` would. Make's PY points at it, so every job of the pipeline, and Make's own name check (`common.py`), sees
the toys; a plain interpreter does not know them."""
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as c  # noqa: E402
import torch  # noqa: E402

# a toy objective: the mixed loss on uniform noise of size eps, drawn from the epoch's generator
c.OBJECTIVES["toy"] = c.Objective(
    lambda model, x, y, eps, steps, rs, lf, gen: (x + eps * torch.empty_like(x).uniform_(-1, 1, generator=gen))
    .clamp(0, 1), c.mixed_loss, "pgd", True, "toy: the mixed loss on uniform noise", False)
# a toy column: FGSM at half the budget
c.COLUMNS["wb_half"] = c.Column("WB-half", "wb", lambda m, x, y, eps, s: c.fgsm(m, x, y, eps / 2), lambda s: 3,
                                c.MASKING, False)
# a toy strategy: the stem and the head
c.STRATEGIES["stem"] = c.Strategy(lambda m: [m.conv1, m.bn1, m.linear], "toy: the stem and the head")

script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(script))
runpy.run_path(script, run_name="__main__")

"""The workbench: common.py's tables of training objectives, evaluation columns and transfer strategies are the one
place their names are defined, and everything else follows them; the paper's own lists stay the paper's."""
import re

import common as c
import report


def test_the_papers_lists_are_the_papers():
    """A method beyond the paper never changes the paper's grid, Table 1's rows or columns, or Figures 2-5."""
    assert c.PAPER_ADV == ("nat", "fgsm", "pgd") and c.PAPER_UNF == (1, 12, 56)
    assert c.PAPER_COLS == ("clean", "bb_fgsm", "bb_pgd", "wb_fgsm", "wb_pgd")  # Table 1's order
    assert report.ADV == c.PAPER_ADV and report.COLS == c.PAPER_COLS and report.UNF == c.PAPER_UNF
    names = {n for k in report.ROWS for n in k.split("-")}
    assert names <= set(c.PAPER_ADV) | {str(u) for u in c.PAPER_UNF} and len(report.ROWS) == 30
    assert not set(report.EXTRA) & set(c.PAPER_COLS) and set(report.EXTRA) | set(c.PAPER_COLS) == set(c.COLUMNS)


def test_names_fit_make_and_file_names():
    """Make splits a transfer's stem on '-' and words on spaces; a named strategy must not look like a depth."""
    for name in [*c.OBJECTIVES, *c.STRATEGIES, *c.COLUMNS]:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
    assert not any(re.fullmatch(r"b\d+", s) for s in c.STRATEGIES)
    assert all(k.startswith("bb_") for k, col in c.COLUMNS.items() if col.box == "bb")  # their examples are x_X
    assert {col.box for col in c.COLUMNS.values()} <= {"clean", "wb", "bb", "worst"}

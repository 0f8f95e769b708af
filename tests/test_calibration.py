"""The claims rule (report.compare) against simulated runs whose truth is known: per-image results of two models
on the same images, each training shifted by a seed spread of 1 point per model (report.calibrate). What issue 19
asks of it: one seed on a margin is wrong at most 5% in all (2 x 2.5%), claim 1's hypothesis gives one word for one
truth, and 3 seeds of a run with many rows keep the error rate and confirm a true equivalence in most runs.

    .venv/bin/python -m pytest tests/test_calibration.py
"""
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import report  # noqa: E402

RUNS = 1000
ON_MARGIN, EQ_MARGIN, EQ_ZERO, CLAIM1 = (c[0] for c in report.CAL_CASES)


def at_most(rate, bound):
    """rate, a fraction of RUNS simulated runs, is consistent with a true rate of at most bound: within two Monte
    Carlo standard errors of it (a rate exactly on the bound is measured above it half the time)."""
    return rate <= bound + 2 * math.sqrt(bound * (1 - bound) / RUNS)


def wrong(res, case):
    return res[case].get("holds", 0) + res[case].get("contradicted", 0)


@pytest.fixture(scope="module")
def one_seed():
    return report.calibrate(RUNS, 1, 10_000, 1.0)


@pytest.fixture(scope="module")
def three_seeds():
    return report.calibrate(RUNS, 3, 10_000, 1.0)


def test_one_seed_on_a_margin_is_wrong_at_most_5_percent(one_seed):
    assert at_most(wrong(one_seed, ON_MARGIN), 0.05), one_seed[ON_MARGIN]
    assert at_most(one_seed[ON_MARGIN].get("holds", 0), 0.025) and at_most(one_seed[ON_MARGIN].get(
        "contradicted", 0), 0.025)
    assert at_most(one_seed[EQ_MARGIN].get("holds", 0), 0.025)  # a false equivalence called true
    # the same runs without the declared seed spread (the rule before issue 19): wrong in about half of them
    old = report.calibrate(RUNS, 1, 10_000, 1.0, seed_sd=0.0)
    assert wrong(old, ON_MARGIN) > 0.3, old[ON_MARGIN]


def test_claim_1_says_one_word_for_one_truth(one_seed, three_seeds):
    """True effect +2.6, half the paper's +5.2: an improvement, so 'contradicted' is wrong, and rare."""
    for res in (one_seed, three_seeds):
        assert at_most(min(res[CLAIM1].get("holds", 0), res[CLAIM1].get("contradicted", 0)), 0.05), res[CLAIM1]
        assert at_most(res[CLAIM1].get("contradicted", 0), 0.025)
    assert three_seeds[CLAIM1]["holds"] > 0.5  # and 3 seeds on 10,000 images mostly find it


def test_three_seeds_keep_the_rate_and_confirm_a_true_equivalence(three_seeds):
    assert at_most(wrong(three_seeds, ON_MARGIN), 0.05), three_seeds[ON_MARGIN]
    assert at_most(three_seeds[EQ_MARGIN].get("holds", 0), 0.025)
    assert three_seeds[EQ_ZERO]["holds"] > 0.5, three_seeds[EQ_ZERO]  # most runs
    assert at_most(three_seeds[EQ_ZERO].get("contradicted", 0), 0.025)


def test_calibrate_command_prints_the_table():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "report.py"), "--calibrate", "--runs", "20"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines() if line[:5].strip() in ("1", "3")]
    assert [(r[0], r[1], r[2]) for r in rows] == [(s, n, sd) for s in ("1", "3") for n in ("1,000", "10,000")
                                                  for sd in ("0.5", "1.0", "2.0")]
    p = subprocess.run([sys.executable, os.path.join(ROOT, "report.py"), "--calibrate", "--seed-sd", "-1"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--seed-sd" in p.stderr
    p = subprocess.run([sys.executable, os.path.join(ROOT, "report.py")], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.strip() == "error: give --run RUN (the folder of the evaluations), or " \
                                                     "--calibrate"

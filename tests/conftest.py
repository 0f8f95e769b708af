"""Shared fixtures: the repository on sys.path, tiny CPU runs of the training scripts, a subprocess runner.

Everything is sized for a couple of CPU cores: resnet8, 40 synthetic images, one epoch.
"""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# One thread unless told otherwise: with several OpenMP threads on a loaded machine (other jobs on the same
# cores) a resnet8 forward pass can take 50x longer, and single-threaded CPU kernels are bitwise reproducible.
THREADS = os.environ.get("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(THREADS))

# The smallest run the scripts accept (--limit must be at least 20); --device cpu keeps results bitwise
# reproducible even where a GPU exists.
TINY = ["--arch", "resnet8", "--epochs", "1", "--limit", "40", "--batch-size", "20", "--data-dir", "synthetic",
        "--device", "cpu"]


@pytest.fixture(scope="session")
def tiny():
    """The common tiny arguments (a fresh list each time)."""
    return lambda: list(TINY)


@pytest.fixture(scope="session")
def run_script():
    """Run `python SCRIPT args` in a subprocess with cwd; returns the CompletedProcess (text output).

    offline points urllib at a dead proxy, so a missing dataset fails at once instead of downloading CIFAR.
    The timeout makes a hang (say a download that never gives up) a failure, not a stuck run.
    """
    def run(script, args, cwd, timeout=120, offline=True):
        env = {**os.environ, "OMP_NUM_THREADS": THREADS}
        if offline:  # a dead proxy: "no network" for urllib (torchvision's download) even on a connected machine
            env = {k: v for k, v in env.items() if k.lower() != "no_proxy"}
            env.update({k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")})
        return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    return run


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory):
    """A one-epoch naturally trained resnet8 CIFAR-100 source, the --init of the transfer tests."""
    import train_source
    out = tmp_path_factory.mktemp("source") / "cifar100_nat.pt"
    train_source.main(["--dataset", "cifar100", "--adv", "nat", "--out", str(out), *TINY])
    return out


@pytest.fixture(scope="session")
def tiny_baseline(tmp_path_factory):
    """A one-epoch FGSM-trained resnet8 CIFAR-10 baseline (PGD monitor with one step to keep it cheap)."""
    import train_source
    out = tmp_path_factory.mktemp("baseline") / "cifar10_fgsm.pt"
    train_source.main(["--dataset", "cifar10", "--adv", "fgsm", "--steps", "1", "--out", str(out), *TINY])
    return out


@pytest.fixture(scope="session")
def tiny_densenet(tmp_path_factory):
    """A one-epoch DenseNet121 black-box source; growth 4 instead of 12 keeps it a few seconds on a CPU."""
    import train_blackbox
    out = tmp_path_factory.mktemp("blackbox") / "densenet121.pt"
    train_blackbox.main(["--growth", "4", "--epochs", "1", "--limit", "20", "--batch-size", "19",
                         "--data-dir", "synthetic", "--device", "cpu", "--out", str(out)])
    return out

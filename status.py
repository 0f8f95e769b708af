"""What a run folder holds and what is left, without starting anything (`make status`, with the variables of the
make that builds it): per stage the outputs built and missing, the jobs running (an output's lock held: its pid and
command, the epoch it reached), the share done. Standard library only.

    python status.py --run RUN STAGE:OUT[,OUT...] ...    # one argument per job: its stage and the files it writes
"""
import argparse
import os
import re


def holder(out):
    """(pid, command) of the live run that holds out's lock, else None. The lock file of a run killed with kill -9
    stays behind, free: it counts as held only while /proc/locks lists a lock on it (or, where there is no
    /proc/locks, while its pid lives)."""
    lock = out + ".lock"
    try:
        with open(lock) as f:
            said = f.read().strip()
        ino = os.stat(lock).st_ino
    except OSError:
        return None
    m = re.match(r"pid (\d+): (.*)", said, re.S)
    if not m:
        return None
    pid = int(m.group(1))
    try:
        with open("/proc/locks") as f:
            locked = {int(w[5].split(":")[2]) for w in (line.split() for line in f) if len(w) > 5 and w[1] == "FLOCK"}
        held = ino in locked
    except (OSError, ValueError, IndexError):
        try:
            os.kill(pid, 0)
            held = True
        except OSError:
            held = False
    return (pid, m.group(2)) if held else None


def epoch(out, command):
    """'epoch k of N' of a training that is running, from its X.jsonl (one row per finished epoch) and --epochs."""
    m = re.search(r"--epochs (\d+)", command)
    try:
        with open(out[:-3] + ".jsonl") as f:
            done = sum(1 for _ in f)
    except OSError:
        done = 0
    return f", epoch {done + 1} of {m.group(1)}" if m and out.endswith(".pt") and "evaluate.py" not in command else ""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("jobs", nargs="*", help="STAGE:OUT[,OUT...], one per job")
    a = p.parse_args(argv)
    stages, running, jobs_done = {}, [], 0
    for job in a.jobs:
        stage, outs = job.split(":", 1)
        outs = outs.split(",")
        built = [o for o in outs if os.path.exists(o)]
        jobs_done += len(built) == len(outs)
        st = stages.setdefault(stage, {"built": 0, "missing": []})
        st["built"] += len(built)
        st["missing"] += [o for o in outs if o not in built]
        running += [(o, h) for o in outs if o not in built for h in [holder(o)] if h]
    n = sum(s["built"] + len(s["missing"]) for s in stages.values())
    k = sum(s["built"] for s in stages.values())
    print(f"{a.run}: {k} of {n} outputs built ({100 * k / max(n, 1):.0f}%), {jobs_done} of {len(a.jobs)} jobs done, "
          f"{len({pid for _, (pid, _) in running})} running")
    for name, s in stages.items():
        miss = s["missing"]
        shown = " ".join(os.path.basename(o) for o in miss[:6]) + (f" (+{len(miss) - 6} more)" if len(miss) > 6 else "")
        print(f"  {name:10s} {s['built']:3d} of {s['built'] + len(miss):3d} built" + (f"; missing: {shown}" if miss
                                                                                       else ""))
    for out, (pid, command) in running:
        print(f"running: {out}: pid {pid}{epoch(out, command)} ({command})")


if __name__ == "__main__":
    main()

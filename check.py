"""Every stage's command checked before Make schedules the first job, in one process (the Makefile runs it):

    check.py --py PY [--elsewhere] '::LABEL' SCRIPT ARGS... '::VAR' ARGS... '::LABEL' SCRIPT ARGS...

Each job is the command a stage's recipe runs, cut into segments named by the Make variable they come from; a
segment that starts with a script starts the next job. Each script checks the command as its own --check does
(flags, depths against --arch, devices; nothing is read or written), segment by segment, so that a refusal names
the variable that brought it. Prints nothing and exits 0 when every job passes; else one line, exit 2. With no
job it checks that PY can run the scripts. --elsewhere: LAUNCH runs the jobs on other machines (srun), whose
devices cannot be checked here.
"""
import argparse
import importlib
import sys


def refuse(line):
    print(line)
    sys.exit(2)


def jobs(argv, scripts):
    """[(script, [(label, args)])] from the labelled segments."""
    segments, out = [], []
    for tok in argv:
        if tok.startswith("::"):
            segments.append((tok[2:], []))
        elif not segments:
            refuse(f"check.py: {tok!r} before the first '::LABEL'")
        else:
            segments[-1][1].append(tok)
    for label, args in segments:
        if args and args[0] in scripts:
            out.append((args[0], [(label, args[1:])]))
        elif args and out:
            out[-1][1].append((label, args))
    return out


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--py", default=sys.executable, help="the interpreter as Make names it (PY), for the messages")
    p.add_argument("--elsewhere", action="store_true")
    a, rest = p.parse_known_args(argv)
    try:
        import common as c
        mods = {s: importlib.import_module(s[:-3]) for s in ("train_source.py", "transfer.py", "train_blackbox.py",
                                                            "evaluate.py")}
    except ImportError as e:
        refuse(f"PY={a.py} cannot run the scripts ({type(e).__name__}: {e}): leave PY out, and make builds .venv "
               f"from requirements.txt, or install them into that Python: {a.py} -m pip install -r requirements.txt")
    if a.elsewhere:  # their machines' devices are theirs to check: take any --device as available
        c.torch.cuda.is_available, c.torch.cuda.device_count = (lambda: True), (lambda: 1 << 10)

    def error(self, message):  # argparse's errors as refusals (no usage block, no exit from inside)
        raise c.UsageError(message)
    argparse.ArgumentParser.error = error
    for script, segments in jobs(rest, mods):
        args = []
        for label, seg in segments:
            args += seg
            try:
                mods[script].main([*args, "--check"])
            except c.UsageError as e:
                shown = label if "=" in label else f"{label}='{' '.join(seg)}'"
                refuse(f"{shown}: {script}: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])

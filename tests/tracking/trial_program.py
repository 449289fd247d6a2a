"""A tiny sweep trial: logs ``score`` for ``--steps`` steps to a W&B run (offline in tests).

``score`` at step i is ``x * (i + 1) + y``, so a small ``x`` lags from the first step on;
``--crash`` exits 3 after starting the run; ``--sleep`` makes every step take that long.
Unknown flags are accepted, so every macro form of ``${args}`` can be fed to it.

It resumes as the suite's trainers do: after every step it records the step in
``$DLHW_OUT/progress.json`` (its checkpoint), and with ``DLHW_RESUME=auto`` it continues after the
recorded step, in the same W&B run (``WANDB_RUN_ID`` and ``WANDB_RESUME`` come from the runner).
It reports ``score`` to the sweep runner's metric file as the suite's trainers do (``[step, score]``
lines). Every step it logs is appended to ``$DLHW_OUT/steps.log`` with its process id, so a test can
tell which process logged what.

Handshake for tests that must act while a trial runs, whatever the machine's load: the trial whose
``x`` equals ``--hold_x`` writes ``$DLHW_OUT/held`` after ``--hold_at`` steps (in a run that
started from step 0) and then waits, without logging more, until ``--release`` names a file that
exists or a signal ends it; after ``--hold_s`` seconds it gives up with exit code 4.
``--crash_x`` makes the trial with that ``x`` exit 3 before it starts a run.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import wandb

p = argparse.ArgumentParser()
p.add_argument("--x", type=float, default=1.0)
p.add_argument("--y", type=float, default=0.0)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--crash", default="False")
p.add_argument("--crash_x", type=float, default=None)
p.add_argument("--hold_x", type=float, default=None)
p.add_argument("--hold_at", type=int, default=1)
p.add_argument("--hold_s", type=float, default=120.0)
p.add_argument("--release", default="")
args, unknown = p.parse_known_args()
print("argv", json.dumps(sys.argv[1:]), flush=True)
if args.crash_x is not None and args.x == args.crash_x:
    print("crashing on purpose before the run", flush=True)
    sys.exit(3)

out = Path(os.environ.get("DLHW_OUT", "."))
progress = out / "progress.json"
start = 0
if os.environ.get("DLHW_RESUME") == "auto" and progress.is_file():
    start = json.loads(progress.read_text())["step"] + 1
print("start", start, flush=True)

run = wandb.init(project="trial-program")


class Stop(BaseException):
    pass


def on_stop(signum, frame):
    raise Stop


# Stopped as the suite's trainers are: the run finished as preempting, then the process ends by the signal.
signal.signal(signal.SIGTERM, on_stop)
if args.crash == "True":
    print("crashing on purpose", flush=True)
    sys.exit(3)
try:
    for i in range(start, args.steps):
        time.sleep(args.sleep)
        # Committed at once: a row W&B holds back for later steps would be lost with a trial killed while it holds.
        score = args.x * (i + 1) + args.y
        run.log({"score": score}, commit=True)  # W&B's own _step, as the suite's logger leaves it
        run.summary["score"] = max(score, run.summary.get("score", score))  # a plain number, as sweeps sort on
        if os.environ.get("DLHW_SWEEP_METRIC") == "score":  # what core.events.Session does for the trainers
            with open(os.environ["DLHW_SWEEP_METRIC_FILE"], "a") as fh:
                fh.write(json.dumps([i, score]) + "\n")
        with open(out / "steps.log", "a") as fh:
            fh.write(f"{os.getpid()} {i}\n")
        tmp = progress.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": i}))
        tmp.replace(progress)
        if args.x == args.hold_x and i + 1 == args.hold_at and start == 0:
            (out / "held.tmp").write_text(str(os.getpid()))
            (out / "held.tmp").replace(out / "held")  # whole when the test sees it
            deadline = time.monotonic() + args.hold_s
            while not (args.release and Path(args.release).exists()):
                if time.monotonic() > deadline:
                    print("held too long: nobody released or stopped this trial", flush=True)
                    run.finish(exit_code=4)
                    sys.exit(4)
                time.sleep(0.05)
except Stop:
    run.mark_preempting()
    run.finish(exit_code=143)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
run.finish()

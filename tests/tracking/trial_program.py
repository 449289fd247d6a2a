"""A tiny sweep trial: logs ``score`` for ``--steps`` steps to a W&B run (offline in tests).

``score`` at step i is ``x * (i + 1) + y``, so a small ``x`` lags from the first step on;
``--crash`` exits 3 after starting the run; ``--sleep`` makes every step take that long.
Unknown flags are accepted, so every macro form of ``${args}`` can be fed to it.
"""

import argparse
import json
import sys
import time

import wandb

p = argparse.ArgumentParser()
p.add_argument("--x", type=float, default=1.0)
p.add_argument("--y", type=float, default=0.0)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--crash", default="False")
args, unknown = p.parse_known_args()
print("argv", json.dumps(sys.argv[1:]), flush=True)

run = wandb.init(project="trial-program")
if args.crash == "True":
    print("crashing on purpose", flush=True)
    sys.exit(3)
run.define_metric("score", summary="max")
for i in range(args.steps):
    time.sleep(args.sleep)
    run.log({"score": args.x * (i + 1) + args.y})
run.finish()

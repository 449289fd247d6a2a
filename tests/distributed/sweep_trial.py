"""Stands in for ``launch.py`` in a torchrun sweep trial: each rank writes where it runs and the
sweep parameters it sees (its command line after the subcommand, and the agent's parameter
file) to ``$DLHW_OUT/rank<R>.json``."""

import json
import os
import sys
from pathlib import Path

import yaml

from dlhw.core.distributed import init_distributed

dist = init_distributed("cpu")
params = yaml.safe_load(Path(os.environ["WANDB_SWEEP_PARAM_PATH"]).read_text())
seen = {"rank": dist.rank, "world": dist.world_size, "argv": sys.argv[1:],
        "param_file": {k: v["value"] for k, v in params.items() if isinstance(v, dict)},  # beside wandb_version
        "sum_of_ranks": dist.all_reduce_sum({"r": dist.rank})["r"]}
(Path(os.environ["DLHW_OUT"]) / f"rank{dist.rank}.json").write_text(json.dumps(seen))
dist.shutdown()

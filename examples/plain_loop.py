"""The suite's panels in a plain PyTorch loop: a small CNN on scikit-learn's digits, AdamW with
weight decay, and four plugins that log to the run this script starts itself.

    python examples/plain_loop.py --epochs 3        # WANDB_MODE=offline to stay off the network
"""

import argparse

import torch
import wandb
from sklearn.datasets import load_digits
from torch import nn

from dlhw.callbacks.panels import ConfusionMatrix, FeatureMaps, LearnedFilters
from dlhw.callbacks.weight_decay import WeightDecayProbe

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--dir", default=None, help="folder for the W&B run (default: W&B's)")
args = parser.parse_args()

digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (N, 1, 8, 8) in [0, 1]
y = torch.tensor(digits.target)
train, test = slice(0, 1500), slice(1500, None)
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)

run = wandb.init(project="dlhw-examples", dir=args.dir, config={"epochs": args.epochs, "lr": 3e-3, "weight_decay": 0.05})
filters = LearnedFilters(model, layer="0")            # a conv by qualified name (or the module)
maps = FeatureMaps(model, x[test][:4], labels=[str(int(t)) for t in y[test][:4]])
probe = WeightDecayProbe(optimizer)                   # hooks optimizer.step(): wd/* every step
batch = torch.randperm(1500)[:256]
for epoch in range(1, args.epochs + 1):
    for idx in torch.randperm(1500).split(64):
        loss = nn.functional.cross_entropy(model(x[train][idx]), y[train][idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log({"train/loss": loss.item()})
    probe.curvature(lambda: nn.functional.cross_entropy(model(x[train][batch]), y[train][batch]), model=model)
    filters.log(step=epoch)
    maps.log(step=epoch)
with torch.no_grad():
    predictions = model(x[test]).argmax(1)
run.summary["test/acc"] = float((predictions == y[test]).float().mean())
ConfusionMatrix([str(i) for i in range(10)]).log(y[test], predictions)
run.finish()

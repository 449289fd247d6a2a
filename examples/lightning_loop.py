"""The suite's panels in a Lightning loop, beside Lightning's own WandbLogger: a small CNN on
scikit-learn's digits, AdamW with weight decay.

    python examples/lightning_loop.py --epochs 3     # WANDB_MODE=offline to stay off the network
"""

import argparse

import lightning as L
import torch
import wandb
from lightning.pytorch.loggers import WandbLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dlhw.callbacks.lightning import ConfusionMatrixCallback, FeatureMapsCallback, LearnedFiltersCallback, WeightDecayCallback


class DigitsNet(L.LightningModule):
    def __init__(self, lr: float = 3e-3, weight_decay: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss

    def test_step(self, batch, batch_idx):
        self.log("test/acc", (self(batch[0]).argmax(1) == batch[1]).float().mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--dir", default=".", help="folder for the W&B run")
args = parser.parse_args()

digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
y = torch.tensor(digits.target)
torch.manual_seed(0)
train = DataLoader(TensorDataset(x[:1500], y[:1500]), batch_size=64, shuffle=True)
test = DataLoader(TensorDataset(x[1500:], y[1500:]), batch_size=256)
trainer = L.Trainer(
    max_epochs=args.epochs, log_every_n_steps=10, logger=WandbLogger(project="dlhw-examples", save_dir=args.dir), enable_progress_bar=False,
    enable_checkpointing=False,
    callbacks=[LearnedFiltersCallback(layer="net.0"), FeatureMapsCallback(x[1500:1504], labels=[str(int(t)) for t in y[1500:1504]]),
               ConfusionMatrixCallback([str(i) for i in range(10)]), WeightDecayCallback(curvature_batch=(x[:256], y[:256]))],
)
model = DigitsNet()
trainer.fit(model, train)
trainer.test(model, test)
# The logger leaves its run open for more fits; finishing it writes everything before the script exits.
wandb.finish()

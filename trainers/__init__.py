"""What trains: the training loop, the experiments (plain functions where nothing trains), models and data."""

import os

# albumentations looks up its latest version on PyPI when imported (a wait behind a firewall); set before any
# module here imports it, and a user's own setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

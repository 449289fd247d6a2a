"""What trains: the training loop, the experiments (plain functions where nothing trains), models and data."""

import os

# albumentations looks up its latest version on PyPI when imported: a warning offline, a wait
# behind a firewall that drops packets. Its own switch turns that off, and must be set before
# any module here imports it. A user's own setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

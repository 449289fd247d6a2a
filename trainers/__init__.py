"""What trains: the training loop, the experiments (plain functions where nothing trains), models and data."""

import os

# albumentations asks PyPI for its latest version on import (a wait behind a firewall); a user's setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

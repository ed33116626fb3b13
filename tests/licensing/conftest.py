"""Makes the repository root importable so the tests can import ``examples.licensing``."""

from __future__ import annotations

import sys
from pathlib import Path

# ``python -m pytest`` from the repository root puts the root on sys.path, a bare ``pytest`` or a
# run from another directory does not, and ``examples`` is not an installed package; without this
# the platform's tests would pass or fail depending on how pytest was started.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import os  # noqa: E402

from tidings.messaging.personal import MASTER_KEY_ENV, MasterKey  # noqa: E402

# Buyer data is personal: the platform seals it with keys wrapped by the master key, and refuses to
# start without one. Every test store is fresh, so one key per test session will do.
os.environ.setdefault(MASTER_KEY_ENV, MasterKey.generate())

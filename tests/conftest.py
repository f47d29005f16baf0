"""Test-wide settings: no network, no compile, W&B never online."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"          # no test may reach the Hugging Face hub
os.environ["DISABLE_COMPILE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny test models: threads only add spin-waits on 2 cores
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.pop("WANDB_API_KEY", None)
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HRM_SHARED_DIR", REPO.parent / "shared"))
RAW = SHARED / "data" / "raw"


@pytest.fixture(scope="session")
def raw_data() -> Path:
    if not RAW.is_dir():
        pytest.skip(f"shared raw data not found at {RAW} (set HRM_SHARED_DIR)")
    return RAW

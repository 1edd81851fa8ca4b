"""Where the benchmark scripts find their data: `shared/data` beside the checkout, or $VQCODEC_DATA.

    VQCODEC_DATA=/data/vqcodec .venv/bin/python benchmarks/rd_kodak.py
"""

from __future__ import annotations

import os
from pathlib import Path

DATA = Path(os.environ.get("VQCODEC_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
KODAK = DATA / "kodak"  # evaluation only: never trained on
TRAIN = DATA / "train"  # 256x256 natural-photo crops (see its SOURCES.md)

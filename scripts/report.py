#!/usr/bin/env python3
"""Thin wrapper: ``python scripts/report.py PATH... [--out DIR] [--target-accuracy X]``.

The same as ``fedbench-report`` / ``python -m fedbench.report`` (see fedbench/report/).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fedbench.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

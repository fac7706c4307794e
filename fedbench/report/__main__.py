"""``python -m fedbench.report``: the same as ``fedbench-report``."""

import sys

from fedbench.report.cli import main

sys.exit(main())

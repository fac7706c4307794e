"""``python -m fedbench.report``: the same as ``fedbench-report``."""

import sys

from fedbench.report.cli import main

if __name__ == "__main__":  # not on a mere import (tools that walk packages import every module)
    sys.exit(main())

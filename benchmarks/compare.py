"""Regenerate docs/benchmarks.md: Corral side by side with nginx and HAProxy.

    .venv/bin/python benchmarks/compare.py [--quick] [--sections routing,overhead]

See src/corral/bench/suite/ for what each section measures and how.
"""

import sys

from corral.bench.suite.report import main

if __name__ == "__main__":
    sys.exit(main())

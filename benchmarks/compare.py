"""Regenerate docs/benchmarks.md: Corral side by side with nginx and HAProxy.

    .venv/bin/python benchmarks/compare.py [--quick] [--sections routing,overhead]

See benchmarks/comparison/ for what each section measures and how. This script's
directory is on the import path when it runs, so ``comparison`` imports from there.
"""

import sys

from comparison.report import main

if __name__ == "__main__":
    sys.exit(main())

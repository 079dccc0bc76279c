#!/usr/bin/env python3
"""CLI: see imagenet_fleet/verify.py (`--help`)."""

import sys

from imagenet_fleet.verify import main

if __name__ == "__main__":
    sys.exit(main())

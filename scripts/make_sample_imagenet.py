#!/usr/bin/env python3
"""CLI: see imagenet_fleet/sample.py (`--help`)."""

import sys

from imagenet_fleet.sample import main

if __name__ == "__main__":
    sys.exit(main())

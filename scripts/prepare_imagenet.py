#!/usr/bin/env python3
"""CLI: see imagenet_fleet/prepare.py (`--help`)."""

import sys

from imagenet_fleet.prepare import main

if __name__ == "__main__":
    sys.exit(main())

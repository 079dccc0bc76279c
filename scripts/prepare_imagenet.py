#!/usr/bin/env python3
"""CLI: see imagenet_fleet/prepare.py (`--help`)."""

import sys

from imagenet_fleet.prepare import main

sys.exit(main())

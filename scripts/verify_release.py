#!/usr/bin/env python3
"""Read a published release back and check every object against its manifest (see imagenet_fleet.publish)."""
import sys

from imagenet_fleet.publish import main_verify

if __name__ == "__main__":
    sys.exit(main_verify())

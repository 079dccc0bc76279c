#!/usr/bin/env python3
"""Publish a TFDS imagenet2012 build to S3, manifest last (see imagenet_fleet.publish)."""
import sys

from imagenet_fleet.publish import main

if __name__ == "__main__":
    sys.exit(main())

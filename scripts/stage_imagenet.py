#!/usr/bin/env python3
"""Stage ILSVRC2012_img_*.tar from S3 into TFDS's manual dir (see imagenet_fleet.stage)."""
import sys

from imagenet_fleet.stage import main

if __name__ == "__main__":
    sys.exit(main())

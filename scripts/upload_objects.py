#!/usr/bin/env python3
"""Upload files to an s3:// folder with sha256 metadata, skipping equal objects (see imagenet_fleet.publish)."""
import sys

from imagenet_fleet.publish import main_upload_objects

if __name__ == "__main__":
    sys.exit(main_upload_objects())

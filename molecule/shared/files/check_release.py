"""Run on the controller: is every object of every published release what its manifest says?

Written apart from the product's own verify_release.py on purpose (plain boto3, no shared code): lists the
releases under s3://BUCKET/PREFIX, reads each manifest.json, downloads every object it lists and compares size
and sha256, and flags objects under the release that the manifest does not list. Credentials and endpoint come
from the environment (AWS_*). Prints one JSON line: per release, files checked, bytes, problems.
"""

from __future__ import annotations

import hashlib
import json
import sys

import boto3


def main(bucket: str, prefix: str) -> int:
    s3 = boto3.client("s3")
    keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])]
    report: dict[str, dict[str, object]] = {}
    for manifest_key in sorted(k for k in keys if k.endswith("/manifest.json")):
        root = manifest_key[: -len("manifest.json")]
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
        problems, listed, total = [], set(), 0
        for entry in manifest["files"]:
            path = entry["path"]
            listed.add(root + path)
            body = s3.get_object(Bucket=bucket, Key=root + path)["Body"].read()
            total += len(body)
            if len(body) != entry["size"] or hashlib.sha256(body).hexdigest() != entry["sha256"]:
                problems.append(f"{path}: does not match the manifest")
        extra = sorted(k for k in keys if k.startswith(root) and k != manifest_key and k not in listed)
        problems += [f"{k}: not in the manifest" for k in extra]
        report[root] = {"files": len(listed), "bytes": total, "problems": problems}
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

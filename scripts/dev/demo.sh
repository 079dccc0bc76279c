#!/usr/bin/env bash
# The demo: a local SeaweedFS as the object store, sample ImageNet tars in it, and prepare.yml on this machine.
# Everything lives under .demo/ (IMAGENET_FLEET_DEMO_DIR); the S3 server is stopped on exit.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
py=${PYTHON:-$repo/.venv/bin/python}
export IMAGENET_FLEET_DEMO_DIR=${IMAGENET_FLEET_DEMO_DIR:-$repo/.demo}
port=${DEMO_S3_PORT:-8333}
demo=$IMAGENET_FLEET_DEMO_DIR
mkdir -p "$demo"

stop_s3() { "$py" scripts/dev/s3_server.py stop --pidfile "$demo/s3.pid" >/dev/null 2>&1 || true; }
trap stop_s3 EXIT
t0=$SECONDS
"$py" scripts/dev/s3_server.py start --dir "$demo/s3" --port "$port" --pidfile "$demo/s3.pid" --env-file "$demo/s3.env" >/dev/null
set -a; . "$demo/s3.env"; set +a
echo "== S3 (SeaweedFS) at $AWS_ENDPOINT_URL ($((SECONDS - t0)) s)"

t=$SECONDS
"$py" scripts/make_sample_imagenet.py --out "$demo/sample" --classes 20 --images-per-class 40 \
  --val-images 200 --test-images 100 --special --seed 0 >"$demo/sample.json"
"$py" scripts/upload_objects.py --dest s3://imagenet/ILSVRC2012/ --create-bucket "$demo"/sample/ILSVRC2012_img_*.tar >/dev/null
echo "== sample tars made and uploaded to s3://imagenet/ILSVRC2012/ ($((SECONDS - t)) s)"

t=$SECONDS
ansible-playbook -i inventory/local/hosts.yml prepare.yml -e imagenet_fleet_summary_file="$demo/summary.json"
echo "== prepare.yml ($((SECONDS - t)) s)"

"$py" - "$demo/summary.json" <<'PYEOF'
import json, sys
for host, s in json.load(open(sys.argv[1])).items():
    print(f"\n{host}")
    for split, info in sorted(s["splits"].items()):
        print(f"  {split:<11} {info['examples']:>7} examples  {info['shards']:>3} shards  {info['bytes'] / 1e6:8.1f} MB")
    print(f"  build:     {s['build_dir']}")
    print(f"  published: {s['release']}")
    print("  seconds:   " + ", ".join(f"{k} {float(v):.1f}" for k, v in s["seconds"].items()))
PYEOF
echo "== demo done in $((SECONDS - t0)) s (run it again: nothing changes, every stage is skipped)"

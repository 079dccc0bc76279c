#!/bin/bash
# bench/bench_prepare.py on the lent GPU host (16 cores, no network): TFDS's own build against the parallel engine
# side by side, on the host's own disk, with every core. How it was run there, from the repo root:
# - .whl/ holds the cp312 wheels of device_check.sh (TFDS, crc32c, array_record, ... ; see its header);
# - TensorFlow (tensorflow-cpu 2.21.0, cp312; its 274 MB wheel is over what one call may carry) travels as an xz'd
#   tar of the wheel's files without tensorflow/include (`unzip` the wheel, `rm -r tensorflow/include`,
#   `tar -cf - . | xz -6 -T2`: 147 MB), cut with head/tail into .tf1/tf.tar.xz.1 (46 MB: that call also carries
#   .whl/), .tf2/tf.tar.xz.2 and .tf3/tf.tar.xz.3, one part per call while the machine stays warm (30 s): the
#   first call copies .whl/* and .tf1/* to /tmp/tfparts, the second .tf2/*, the third runs this with .tf3/
#   carried; .tf1/ also holds the pure-Python wheels TF imports that the host lacks (gast, astunparse,
#   google_pasta).
# SETS picks the bench's sets (default "12k 95k", each its own invocation so an early one's table survives a
# later one's timeout); DEADLINE the seconds from the start by which the last set is stopped; BENCH_ROOT the folder
# for samples and runs (on a real disk, not tmpfs).
set -u
PY=${PY:-$(command -v python3)}
OUT=${OUT:-/tmp/out}
BENCH_ROOT=${BENCH_ROOT:-/var/tmp/imagenet-fleet-bench}
SETS=${SETS-12k 95k}
DEADLINE=${DEADLINE:-500}
mkdir -p "$OUT" /tmp/tfparts
{ date -u; nproc; free -g; df -h / /tmp "$BENCH_ROOT" 2>/dev/null; nvidia-smi -L; $PY -V; } >"$OUT/host.txt" 2>&1
cp .tf3/* /tmp/tfparts/ 2>/dev/null
t0=$(date +%s)
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  /tmp/tfparts/*.whl || exit 1
cat /tmp/tfparts/tf.tar.xz.[123] | $PY -c 'import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz").extractall(sys.argv[1])' /tmp/site || exit 1
export PYTHONPATH=/tmp/site LC_ALL=C.UTF-8 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
$PY -c 'import tensorflow as tf, tensorflow_datasets as tfds; print("tensorflow", tf.__version__, "tfds", tfds.__version__)' \
  2>&1 | tee -a "$OUT/host.txt" | grep -q '^tensorflow ' || exit 1
echo "install: $(($(date +%s) - t0)) s" | tee -a "$OUT/host.txt"
mkdir -p "$BENCH_ROOT"
for set in $SETS; do
  left=$((DEADLINE - ($(date +%s) - t0)))
  if ((left <= 0)); then echo "bench $set: not run, DEADLINE passed" | tee -a "$OUT/host.txt"; continue; fi
  timeout "$left" $PY bench/bench_prepare.py --sets "$set" --root "$BENCH_ROOT" >"$OUT/bench-$set.txt" 2>"$OUT/bench-$set.err"
  echo "bench $set: rc $?, $(($(date +%s) - t0)) s" | tee -a "$OUT/host.txt"
  cat "$OUT/bench-$set.txt"
done

#!/bin/bash
# Checks for a GPU host with no network, run from the repo root (how they were run on the GPU machine lent to this
# project): the tfds_env role's TensorFlow choice (CUDA build where nvidia-smi lists a GPU), then the engine's
# scaling with cores at ILSVRC2012's member count and with realistic images. The Python packages come as wheels in
# .whl/ (cp312: tensorflow-datasets, crc32c, array_record, ansible-core and their dependencies; no TensorFlow,
# so the samples have no CMYK/PNG images); PY picks the interpreter. The wheels used (`pip download --no-deps
# --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 ...`; promise is source-only, built with
# `pip wheel`): ansible_core-2.19.14 array_record-0.8.6 cffi-2.1.1 crc32c-2.9.post0 cryptography-50.0.2
# dm_tree-0.1.10 docstring_parser-0.18.0 einops-0.8.2 etils-1.15.0 googleapis_common_protos-1.76.0
# immutabledict-4.3.1 importlib_resources-6.5.2 promise-2.3 protobuf-7.36.2 pycparser-3.12 resolvelib-1.2.1
# simple_parsing-0.1.9 tensorflow_datasets-4.9.10 tensorflow_metadata-1.21.0 termcolor-3.3.0 toml-0.10.2.
set -u
PY=${PY:-$(command -v python3)}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
$PY -m compileall -q -j0 /tmp/site >/dev/null
export PYTHONPATH=/tmp/site LC_ALL=C.UTF-8 PYTHONUNBUFFERED=1 ANSIBLE_ROLES_PATH=$PWD/roles
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
{ nproc; free -g; nvidia-smi -L; } 2>&1 | tee "$OUT/host.txt"
for v in auto:true cpu:false; do
  $PY /tmp/site/bin/ansible-playbook -i localhost, -c local -e ansible_python_interpreter="$PY" \
    -e tfds_env_tensorflow_variant="${v%%:*}" -e expect_gpu="${v#*:}" scripts/dev/gpu_check.yml 2>&1 | tee -a "$OUT/gpu_check.txt"
done
$PY bench/bench_scaling.py --no-special --root /tmp/bench --tiny --images-per-class 1281 --val-images 50000 | tee "$OUT/tiny.txt"
rm -rf /tmp/bench
$PY bench/bench_scaling.py --no-special --root /tmp/bench --workers 1,4,16 | tee "$OUT/real.txt"

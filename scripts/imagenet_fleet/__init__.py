"""imagenet-fleet: the Python that runs on the hosts (staging, preparation, verification, publishing).

Importable as `imagenet_fleet` whenever `scripts/` is on `sys.path` — which it is for every
`scripts/*.py` CLI (Python puts the script's folder first) and for pytest (pyproject's `pythonpath`).
"""

# Two commands for a newcomer: `make demo` (the whole job on a local S3 and sample data) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export ANSIBLE_CONFIG := $(abspath ansible.cfg)

.PHONY: help venv demo test lint pytest molecule image wheelhouse clean

help:
	@echo "make demo   - stage, prepare, verify and publish sample ImageNet on this machine (local SeaweedFS S3)"
	@echo "make test   - lint, pytest, molecule test (podman)"

# The controller/developer venv; re-installed when a requirements file changes.
$(VENV)/.installed: requirements/controller.txt requirements/host-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements/controller.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	scripts/dev/demo.sh

lint: venv
	$(BIN)/yamllint --strict .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/ansible-lint --profile production --strict

pytest: venv
	$(BIN)/pytest -q

image:
	. scripts/dev/podman_env.sh && scripts/dev/build_host_image.sh

wheelhouse: venv
	scripts/dev/wheelhouse.sh

molecule: venv image wheelhouse
	. scripts/dev/podman_env.sh && $(BIN)/molecule test --all

test: lint pytest molecule

clean:
	rm -rf .demo .cache

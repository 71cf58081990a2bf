# detr_plus: set-up, training, tests and benchmarks in a local virtualenv (.venv).
#   make venv   create/update .venv (fast no-op when nothing changed)
#   make train  train the tiny Deformable-DETR on the synthetic shapes data set (ARGS=... appended)
#   make test   lint (ruff, settings in ruff.toml), then run the test suite
#   make bench  run the benchmarks
#   make mutation  mutation audit: break each paper formula / core rule alone, run the tests meant to
#               catch it, table in docs/mutation_audit.md (minutes; not part of `make test`)
SHELL := /bin/bash
.DEFAULT_GOAL := venv

PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
PIP    := $(VPY) -m pip
# torch/torchvision are installed only when .venv cannot import them yet (a build you put there is kept).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
BUILD_DEPS := "setuptools>=70.1,<81" wheel
DEPS       := fvcore pycocotools scipy tensorboard matplotlib tqdm pytest opencv-python-headless ruff onnx onnxruntime timm
TRAIN_CONFIG ?= configs/shapes/deformable_detr_tiny.py
ARGS ?=

# The stamp changes whenever what the set-up installs changes.
VENV_HASH := $(shell (cat setup.py tools/install_detectron2.py; echo '$(TORCH_PINS) $(BUILD_DEPS) $(DEPS)') | sha256sum | cut -c1-12)
STAMP     := $(VENV)/.stamp-$(VENV_HASH)

.PHONY: venv train test bench mutation

venv: $(STAMP)

$(STAMP):
	@echo "== setting up $(VENV) (takes a few minutes the first time)"
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(BUILD_DEPS)
	$(VPY) -c "import torch, torchvision" 2>/dev/null || $(PIP) install -q $(TORCH_PINS)
	$(VPY) tools/install_detectron2.py
	$(PIP) install -q $(DEPS)
	$(PIP) install -q --no-build-isolation -e .
	rm -f $(VENV)/.stamp-*
	touch $@

train: venv
	$(VPY) train_net.py --config-file $(TRAIN_CONFIG) $(ARGS)

test: venv
	$(VPY) -m ruff check .
	$(VPY) -m pytest -q tests $(wildcard projects/*/tests)

bench: venv
	$(VPY) benchmarks/bench_model.py --config-file $(TRAIN_CONFIG)
	$(VPY) benchmarks/bench_ms_deform_attn.py

mutation: venv
	$(VPY) tools/mutation_audit.py --output docs/mutation_audit.md

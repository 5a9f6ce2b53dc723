# Quick start: `make demo` and `make test` on a fresh machine (they create .venv and install when needed).
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
# The tested torch/torchvision pair (PyPI builds; run on CPU too). Not torch 2.13.0's CPU-only wheel.
ifeq ($(ARCH),aarch64)
TORCH_PAIR := torch==2.9.1 torchvision==0.24.1
else
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
endif
EXTRAS := export,train,serve,bench,dev
EXTRAS := $(EXTRAS),corpus,ray

# pyright checks the TensorRT code against TensorRT 10.13's type stubs (tensorrt-stubs, installed with --no-deps
# into .typings/: its `tensorrt` dependency cannot be installed here, and in site-packages the stub-only package
# would shadow a real TensorRT). pyright runs on node (the PyPI wrapper fetches pyright's npm package once).
TRT_STUBS := tensorrt-stubs==10.13.0.35.1
TYPINGS := .typings

.PHONY: install demo test test-slow typecheck bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PAIR)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/spai demo $(if $(IMAGES),--images $(IMAGES))

$(TYPINGS)/tensorrt/__init__.pyi:
	$(PY) -m pip install -q --no-deps --target $(TYPINGS) '$(TRT_STUBS)'

typecheck: install $(TYPINGS)/tensorrt/__init__.pyi
	$(PY) -m pyright -p pyrightconfig.json

# `slow` tests (full-size b16 exports, ViT-B-16) each have a fast twin on spai-tiny that runs here: `make test-slow`.
# SPAI_CHECK_CLEAN_TREE=1: a run that writes tracked files fails (tools/clean_tree.py).
test: install typecheck
	SPAI_CHECK_CLEAN_TREE=1 $(PY) -m pytest -q -m "not slow"
	SPAI_CHECK_CLEAN_TREE=1 $(PY) -m pytest benchmarks/ -q -rs -p no:cacheprovider

test-slow: install
	$(PY) -m pytest -q -m slow

# One run per part (each fits in ~25 min on 2 cores; a ratio is only taken within one run), then one report.
# Run it on an otherwise idle machine: the report refuses the ratios of a run whose matmul probe dropped.
BENCH_OUT ?= benchmarks/results/latest
ROUTE_RUN := $(PY) -m pytest benchmarks/test_peak.py benchmarks/test_cpu_routes.py -rs --bench-mode moderate
bench: install
	mkdir -p $(BENCH_OUT)
	$(PY) -m pytest benchmarks/ -rs --bench-mode moderate --ignore=benchmarks/test_cpu_routes.py \
		--benchmark-json=$(BENCH_OUT)/suite.json
	$(ROUTE_RUN) -k "peak_cpu or spai-b16" --benchmark-json=$(BENCH_OUT)/routes-spai-b16.json
	$(ROUTE_RUN) -k "peak_cpu or spai-fusion-b16" --benchmark-json=$(BENCH_OUT)/routes-spai-fusion-b16.json
	$(ROUTE_RUN) -k "peak_cpu or spai-tiny-trained" --benchmark-json=$(BENCH_OUT)/routes-spai-tiny-trained.json
	$(PY) benchmarks/report.py $(BENCH_OUT)/*.json -o $(BENCH_OUT)

clean:
	rm -rf $(VENV) demo_output .pytest_cache $(TYPINGS)

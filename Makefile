# The commands (each creates .venv and builds first):
#   make test       the fast tier: every op on every backend here, every public contract, the statistical checks
#                   that need no training, the C++ ctest (about 9 minutes from a fresh clone on 2 cores)
#   make test-all   the fast tier, then the full tier: examples trained to a number, subprocess/kill/lock runs,
#                   the CUDA compile checks, the wheel built and installed in a clean venv (what CI runs)
#   make demo       one million Langevin chains on the 8-Gaussian target (samples/s, MMD, mode weights, PNG)
#   make lint       ruff
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
JOBS   ?= $(shell nproc)
START  := $(shell date +%s)
PYTEST := $(BIN)/python -P -m pytest -q -n $(JOBS) --durations=25  # -P: the source tree's kernels/ must not shadow a package of that name (transformers looks one up)

.PHONY: build ctest test test-slow test-all demo bench lint clean

$(DEPS): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip "setuptools>=70" wheel
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

build: $(DEPS)
	MAX_JOBS=$(JOBS) $(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .

ctest: build
	mkdir -p build
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	      -DPython3_EXECUTABLE="$(CURDIR)/$(BIN)/python" >build/cmake.log
	cmake --build build/cmake -j $(JOBS) >>build/cmake.log
	ctest --test-dir build/cmake --output-on-failure

test: ctest
	$(PYTEST) -m "not slow" tests
	@echo "make test: $$(( $$(date +%s) - $(START) )) s since make started (venv, build and ctest included)"

test-slow: build
	$(PYTEST) -m slow tests

test-all: test test-slow  # CI: make test, make lint, make test-slow

lint: $(DEPS)
	$(BIN)/ruff check .

demo: build
	$(BIN)/python -m fastgen.cli.demo --out demo_out

bench: build  # the peers the suites compare against, installed for the bench run only
	$(BIN)/python -m pip install -q torchsde torchebm==0.8.9 pyro-ppl==1.9.2 numpyro==0.22.0 blackjax==1.7.1
	$(BIN)/python -m bench all

clean:
	rm -rf build fastgen/*.so *.egg-info demo_out

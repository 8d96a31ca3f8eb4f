# Two commands for a fresh machine:
#   make demo   build, then one million Langevin chains on the 8-Gaussian target (samples/s, MMD, mode weights, PNG)
#   make test   build, then the whole suite (pytest, then the C++ ctest against libtorch)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
JOBS   ?= $(shell nproc)

.PHONY: build test demo bench clean

$(DEPS): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip "setuptools>=70" wheel
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

build: $(DEPS)
	MAX_JOBS=$(JOBS) $(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .

test: build
	mkdir -p build && $(BIN)/python -m fastgen.ops >build/schemas.txt
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	      -DFASTGEN_SCHEMAS="$(CURDIR)/build/schemas.txt" >build/cmake.log
	cmake --build build/cmake -j $(JOBS) >>build/cmake.log
	ctest --test-dir build/cmake --output-on-failure
	$(BIN)/python -m pytest -q -n $(JOBS) tests

demo: build
	$(BIN)/python -m fastgen.demo --out demo_out

bench: build
	$(BIN)/python -m pip install -q torchsde
	$(BIN)/python -m bench all

clean:
	rm -rf build fastgen/*.so *.egg-info demo_out

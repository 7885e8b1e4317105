# `make run` and `make test` work on a fresh machine: they create .venv and install what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint typecheck unit toolchain guests clean fuzz bytecode

ENGINE := engine/unicorn-2.1.4-pvkit.patch scripts/setup-engine.sh

# The vCPU engine is Unicorn 2.1.4 with pvkit's patch, built once and cached (setup-engine.sh).
$(STAMP): pyproject.toml setup.py $(wildcard src/pvkit/backends/_*.[ch] src/pvkit/backends/*/_*.c) $(ENGINE)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	./scripts/setup-toolchain.sh engine
	./scripts/setup-engine.sh $(BIN)/python
	touch $@

# Bytecode for every module, where PYTHONDONTWRITEBYTECODE is set (start-up is part of every
# boot, and the bench times it): compileall redoes only what changed since the last time.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q src

run: bytecode
	$(BIN)/pvkit run guests/prebuilt/smp-hello.Image --smp 4

toolchain:
	./scripts/setup-toolchain.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

unit: bytecode toolchain
	$(BIN)/pytest -q

test: lint typecheck unit

# The benchmark suite (needs qemu-system-aarch64 for the QEMU comparisons: toolchain installs it).
bench: bytecode toolchain
	$(BIN)/pvkit bench --json bench.json

# 1 M random hypercalls per architecture against every host invariant (docs/fuzzing.md).
FUZZ_CALLS ?= 1000000
FUZZ_SEED ?= 1
fuzz: $(STAMP)
	$(BIN)/pvkit fuzz --arch arm64 --calls $(FUZZ_CALLS) --seed $(FUZZ_SEED) --smp 2
	$(BIN)/pvkit fuzz --arch x86_64 --calls $(FUZZ_CALLS) --seed $(FUZZ_SEED) --smp 2

guests: toolchain
	$(MAKE) -C guests prebuilt

clean:
	rm -rf $(VENV) guests/build

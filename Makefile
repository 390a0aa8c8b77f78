# The two commands of the README: `make demo` and `make test`. Everything else is set-up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV ?= .venv
# `cpu` installs TensorFlow's CPU-only wheel; on a machine with an NVIDIA GPU use EXTRAS=gpu,test.
EXTRAS ?= cpu,test
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
comma := ,

.PHONY: demo test test-fast train bench accuracy reliability install system-deps services viewer clean

demo: install
	$(BIN)/lumbarnode demo

# pytest's exit code 5 means no tests were collected: that is a failure, not a pass.
test: install system-deps services viewer
	@$(BIN)/python -m pytest $(PYTEST_ARGS); code=$$?; \
	  if [ $$code -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$code

# The fast tier: the unit tests of db/, dicom_io/ and pipeline/ (about a minute); `make test` runs them too.
test-fast: install system-deps services
	@$(BIN)/python -m pytest -m fast $(PYTEST_ARGS); code=$$?; \
	  if [ $$code -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$code

# Re-creates the shipped weights in models/ (about an hour on 2 CPU cores; needs ../shared/data).
# SEEDS="1 2" also trains the U-Net from those seeds on the same validation patients (about 40 min
# each) and sets their figures beside the shipped one in the model card, as in the shipped card.
TRAIN_DIR ?= build/train
SEEDS ?=
train: install
	$(BIN)/lumbarnode train segmentation --out $(TRAIN_DIR)/unet
	for seed in $(SEEDS); do $(BIN)/lumbarnode train segmentation --out $(TRAIN_DIR)/unet_seed$$seed \
	  --seed $$seed --split-seed 0 || exit 1; done
	$(BIN)/lumbarnode train classifier --out $(TRAIN_DIR)/deteclordose
	$(BIN)/lumbarnode package $(TRAIN_DIR)/unet $(TRAIN_DIR)/deteclordose --out models \
	  $(if $(strip $(SEEDS)),--other-seeds $(foreach s,$(SEEDS),$(TRAIN_DIR)/unet_seed$(s)))

# Benchmarks against peers in the same run (DCMTK storescp, ONNX Runtime): prints a table,
# writes bench/results.json. About 10 minutes on 2 cores; needs PostgreSQL and Redis.
bench: install system-deps services
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS),bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

# Accuracy through the product: analyze on the validation patients' real data (wrapped volumes as
# DICOM series, SPIDER slices as PNG), beside `lumbarnode evaluate`'s figures when
# ACCURACY_ARGS="--evaluate build/eval/metrics.json". About 1 minute; needs ../shared/data.
accuracy: install
	$(BIN)/python -m bench.accuracy $(ACCURACY_ARGS)

# Faults, load and fuzzing with the figures table (10,000 fuzz cases; `make test` runs 300).
reliability: install system-deps services
	LUMBARNODE_FUZZ_CASES=10000 $(BIN)/python -m pytest -q -p no:warnings tests/system/test_faults.py \
	  tests/system/test_reliability.py tests/system/test_node.py tests/worker/test_unusable_series.py tests/system/test_tls.py \
	  tests/dicom_io/test_listener.py $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is needed (found $(PYTHON))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

services:
	bash scripts/start-services.sh

# The OHIF Viewer that tests/viewer drives and compose serves: @ohif/app's built dist/, pinned,
# in build/ohif/ with compose/ohif/app-config.js (fetched once from the npm registry).
viewer:
	bash scripts/install-viewer.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

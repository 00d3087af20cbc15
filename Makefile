# vrclip-edge: `make demo` runs the simulated rig end to end, `make test` runs lint and the tests.
# Both create .venv and install what they need on a fresh clone.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO_DIR ?= demo-out

.PHONY: demo test lint format install-dev install-runtime clean

# The runtime alone (no torch): what an edge box installs.
$(VENV)/.runtime-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Runtime + dev tools + the export extra (torch 2.14.1 + torchvision 0.29.1, pinned together).
$(VENV)/.dev-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,export]'
	touch $(VENV)/.runtime-installed $@

install-runtime: $(VENV)/.runtime-installed
install-dev: $(VENV)/.dev-installed

# The main job on the simulated rig: SCPI VNA + switch simulators on loopback, simulated camera and ZED;
# two people are enrolled, then they and one unenrolled visitor walk while identity events stream out.
demo: $(VENV)/.runtime-installed
	mkdir -p $(DEMO_DIR)
	$(BIN)/vrclip-edge config check systemd/edge.example.toml
	$(BIN)/vrclip-firmware selftest --simulate --engine models/vrclip-tiny.onnx
	$(BIN)/vrclip-edge run --simulate --engine models/vrclip-tiny.onnx --people 2 --unknown 1 \
		--duration 30 --workdir $(DEMO_DIR)/sim
	$(BIN)/vrclip-edge record --simulate --seconds 3 --people 2 --lighting dusk --occlusion furniture \
		--out $(DEMO_DIR)/session.h5 --overwrite
	$(BIN)/vrclip-edge inspect $(DEMO_DIR)/session.h5

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache

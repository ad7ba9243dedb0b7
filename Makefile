# Entry points for developers and CI.  `make test` is the test command (.ci/run runs it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: venv test plant bench score clean

venv: $(VENV)/.installed

# Reinstall only when pyproject.toml changed since the last install.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[all]'
	touch $@

test: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

plant: venv
	$(BIN)/recp simulate -c edge_config/plants/demo.yaml

bench: venv
	$(BIN)/python -m benchmarks

# detection scored against the demo plant's ground truth (about a minute)
score: venv
	$(BIN)/python -m benchmarks.score_detection

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis

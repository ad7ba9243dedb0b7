# Entry points for developers and CI.  `make test` is the test command (.ci/run runs it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: venv test reliability demo plant bench score fuzz clean

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

# the fault matrix: every row over the whole chain (tests/reliability/), printed as a table
# and written to build/reliability-matrix.md; -m "" lifts the default run's "not matrix"
reliability: venv
	$(BIN)/pytest -q -m "" tests/reliability

# the whole chain on this machine, about two to four minutes; the report lands in recp-demo/
demo: venv
	$(BIN)/recp demo

plant: venv
	$(BIN)/recp simulate -c edge_config/plants/demo.yaml

# all benchmarks, or a subset: make bench BENCH=detect,agent_cpu
bench: venv
	$(BIN)/python -m benchmarks $(BENCH)

# detection scored against the demo plant's ground truth (about a minute)
score: venv
	$(BIN)/python -m benchmarks.score_detection

# every parser of outside input, 10,000 cases each (about half an hour on a shared 2-core VM);
# add atheris runs with: pip install -e '.[fuzz]' && python -m benchmarks.fuzz --atheris 10000
fuzz: venv
	$(BIN)/python -m benchmarks.fuzz

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis

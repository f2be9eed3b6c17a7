# The two commands a newcomer types: `make demo` and `make test`.
# Both create .venv and install seglab with its dev extra when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/seglab: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(BIN)/seglab

demo: $(BIN)/seglab
	$(BIN)/seglab demo

test: $(BIN)/seglab
	$(BIN)/python -m pytest -q

bench: $(BIN)/seglab
	$(BIN)/python benchmarks/semantic.py

clean:
	rm -rf $(VENV) runs .pytest_cache

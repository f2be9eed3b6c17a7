# The two commands a newcomer types: `make demo` and `make test`.
# Both create .venv and install seglab with its dev extra (and the peers the tests compare against) when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/seglab: pyproject.toml scripts/install_pydensecrf.sh scripts/install_chromium.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	bash scripts/install_pydensecrf.sh $(BIN)/python  # the dense-CRF peer (C++), built from its sdist
	bash scripts/install_chromium.sh  # headless browser for the HTML report's test (apt-get, as root)
	touch $(BIN)/seglab

demo: $(BIN)/seglab
	$(BIN)/seglab demo

test: $(BIN)/seglab
	$(BIN)/python -m pytest -q

bench: $(BIN)/seglab
	$(BIN)/python benchmarks/semantic.py
	$(BIN)/python benchmarks/crf.py
	$(BIN)/python benchmarks/roi.py
	$(BIN)/python benchmarks/ps_roi.py
	$(BIN)/python benchmarks/instance.py
	$(BIN)/python benchmarks/export.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/predict.py
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf $(VENV) runs .pytest_cache

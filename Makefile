# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LISTEN ?= 127.0.0.1:8443
DATA ?= var

.PHONY: run test lint venv clean screenshots

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/consentry-broker dev-setup --certs certs --data-dir $(DATA) --listen $(LISTEN)
	exec $(BIN)/consentry-broker serve --listen $(LISTEN) --data-dir $(DATA) --cert certs/broker.crt --key certs/broker.key

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

screenshots: $(STAMP)
	PYTHONPATH=. $(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV) $(DATA)

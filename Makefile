# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LISTEN ?= 127.0.0.1:8443
DATA ?= var

.PHONY: run test lint venv clean screenshots bench bench-smoke profile

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/consentry-broker dev-setup --certs certs --data-dir $(DATA) --listen $(LISTEN)
	exec $(BIN)/consentry-broker serve --listen $(LISTEN) --data-dir $(DATA) --cert certs/broker.crt --key certs/broker.key

# mypy takes what to check from [tool.mypy] files in pyproject.toml.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The benchmark harness (bench/README.md). socat is the CPU baseline; it,
# the cluster row's PostgreSQL and HAProxy and the bastion rows' OpenSSH
# (bench/bastion.py) come from the system's packages.
bench: $(STAMP)
	command -v socat >/dev/null || apt-get install -y -q socat || echo "bench: no socat; that row is skipped"
	command -v haproxy >/dev/null && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || apt-get install -y -q postgresql haproxy || echo "bench: no PostgreSQL or HAProxy; the cluster row fails"
	command -v ssh >/dev/null && test -x /usr/sbin/sshd || { apt-get update -q && apt-get install -y -q openssh-server openssh-client; } || echo "bench: no OpenSSH server; the bastion rows fail"
	$(BIN)/python -m bench

# Where keystroke CPU goes in the broker, the agent and the console
# (bench/profile.py, bench/results/profile.md). py-spy is a tool, not a dependency.
profile: $(STAMP)
	test -x $(BIN)/py-spy || $(BIN)/python -m pip install --quiet py-spy
	$(BIN)/python -m bench.profile

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke --out $${BENCH_OUT:-bench/results}

screenshots: $(STAMP)
	PYTHONPATH=. $(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV) $(DATA)

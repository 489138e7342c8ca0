# The two commands of the README. VENV is created on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test install bench clean

$(VENV)/.installed: pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,otlp]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/turnout serve --host 127.0.0.1 --port 4000

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) build dist *.egg-info turnout.db*

# mmsearch developer commands. Everything runs from the project's own .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data
PORT ?= 50051
BUNDLE ?= tiny

.PHONY: install test lint proto proto-check serve demo bench test-slow clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes, so `make test` is cheap after the first run.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

lint: install proto-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: install lint
	$(VENV)/bin/pytest -q

test-slow: install
	$(VENV)/bin/pytest -q -m slow

proto: install
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. proto/mmsearch/v1/*.proto

# Regenerates the stubs into a scratch folder and fails if the committed ones differ.
proto-check: install
	@tmp=$$(mktemp -d) && \
	$(PY) -m grpc_tools.protoc -I proto --python_out=$$tmp --grpc_python_out=$$tmp --pyi_out=$$tmp proto/mmsearch/v1/*.proto && \
	for f in $$tmp/mmsearch/v1/*; do \
	  cmp -s "$$f" "mmsearch/v1/$$(basename $$f)" || { echo "stale generated stub: mmsearch/v1/$$(basename $$f) (run make proto)"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "proto stubs up to date"

demo: install
	$(VENV)/bin/mmsearch demo --dir demo

serve: install
	$(VENV)/bin/mmsearch serve --data $(DATA) --port $(PORT) --bundle $(BUNDLE)

bench: install
	$(PY) bench/store.py
	$(PY) bench/ingest_media.py
	$(PY) bench/ingest.py
	$(PY) bench/query.py
	$(PY) bench/quality.py
	$(PY) bench/hostile.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache build dist

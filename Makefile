# Two entry points: `make demo` runs the demo mesh, `make test` runs every check.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit protos docs system-deps bench bench-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# gRPC stubs for examples/protos/*.proto, generated (never committed) into examples/generated/
# as the package examples.generated (the -I mapping makes protoc write package imports).
PROTOS := $(wildcard examples/protos/*.proto)
GENERATED := examples/generated/.stamp

$(GENERATED): $(PROTOS) $(STAMP)
	rm -rf examples/generated
	mkdir -p examples/generated
	$(PY) -m grpc_tools.protoc -Iexamples/generated=examples/protos \
		--python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	touch $(GENERATED)

protos: $(GENERATED)

demo: $(STAMP) $(GENERATED)
	$(PY) -m examples.demo

# The API reference, HTML from the public modules' docstrings (pdoc), in build/api (not
# committed); any pdoc warning or dead cross-reference fails it (tests/test_api_docs.py too).
docs: $(STAMP)
	$(PY) tools/api_docs.py -o build/api

lint: $(STAMP)
	$(VENV)/bin/ruff check meshlib meshlib_control tests examples benchmarks
	$(VENV)/bin/ruff format --check meshlib meshlib_control tests examples benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Debian's chromium, for the dashboard test, and etcd-server (/usr/bin/etcd), for the
# store and HA tests (they start their own 3-member cluster). Where one cannot be installed
# its tests skip, saying why, except under CI (CI=true), where a missing system dependency
# fails the run (tests/conftest.py turns such a skip into a failure).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		elif [ -n "$$CI" ]; then echo "chromium missing and cannot be installed (needs root and apt-get)"; exit 1; \
		else echo "chromium not installed (needs root and apt-get): the dashboard test will skip"; fi; }
	@test -x /usr/bin/etcd || command -v etcd >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; \
		elif [ -n "$$CI" ]; then echo "etcd missing and cannot be installed (needs root and apt-get)"; exit 1; \
		else echo "etcd not installed (needs root and apt-get): the etcd store and HA tests will skip"; fi; }
	@test -x /usr/bin/prometheus || command -v prometheus >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
		elif [ -n "$$CI" ]; then echo "prometheus missing and cannot be installed (needs root and apt-get)"; exit 1; \
		else echo "prometheus not installed (needs root and apt-get): the Prometheus discovery test will skip"; fi; }
	@command -v npm >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; \
		elif [ -n "$$CI" ]; then echo "npm missing and cannot be installed (needs root and apt-get)"; exit 1; \
		else echo "npm not installed (needs root and apt-get): the Consul tests (consul-api-double) will skip"; fi; }

# Debian's wrk, which the data-plane benchmark uses to check its own load generator (the
# check is skipped, saying so in the results, where wrk cannot be installed).
bench-deps:
	@command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
		else echo "wrk not installed (needs root and apt-get): the generator check will skip"; fi; }

# The data-plane benchmark, default profile (~6 min on 2 cores): results in
# benchmarks/results/data_plane.{json,md,*.png} and docs/benchmarks.md (see that page).
bench: $(STAMP) $(GENERATED) bench-deps
	$(PY) -m benchmarks.run --profile default

unit: $(STAMP) $(GENERATED) system-deps
	$(VENV)/bin/pytest -q

test: lint typecheck unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

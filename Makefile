# The two commands a newcomer needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint fmt clean install browser servers console-shots dist

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The worked plugin examples install too: their tests load them by entry point.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml examples/plugins/pyproject.toml
	$(BIN)/pip install -q -e '.[test]' -e examples/plugins
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/xaiproxy serve

# The console tests drive the system Chromium; install it where missing (root only).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (apt-get) for the console tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium chromium-driver >/dev/null; \
	else \
		echo "NOTE: chromium/chromium-driver are missing and this is not root:" \
			"the console browser tests will be SKIPPED (apt-get install chromium chromium-driver)"; \
	fi

# The PostgreSQL and Redis tests start real servers, and tests/test_deploy.py runs nginx
# with deploy/nginx.conf; install them where missing (root only).
servers:
	@if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && command -v redis-server >/dev/null \
		&& command -v nginx >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing postgresql, redis-server and nginx (apt-get) for the store, hot-state and deploy tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends postgresql redis-server nginx >/dev/null; \
	else \
		echo "NOTE: postgresql/redis-server/nginx are missing and this is not root:" \
			"the PostgreSQL and Redis tests will be SKIPPED, tests/test_deploy.py will fail" \
			"(apt-get install postgresql redis-server nginx)"; \
	fi

test: $(STAMP) browser servers
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Screenshots of every console page, into console-shots/ (gitignored), to look at.
console-shots: $(STAMP) browser
	rm -rf console-shots
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_console_browser.py
	@echo "screenshots: $$(ls console-shots | wc -l) files in console-shots/"

bench: $(STAMP)
	$(BIN)/python bench/run.py
	@if command -v wrk >/dev/null; then bench/wrk_cpu.sh; else echo "wrk not installed: no wrk CPU table"; fi

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# dist/: the wheel and sdist, and a single-file zipapp (shiv) that runs `xaiproxy serve`
# with only a Python interpreter. The zipapp holds compiled dependencies for this
# interpreter version and platform, hence the tag in its name (docs/DEPLOY.md).
DIST ?= dist
TAG = $(shell $(BIN)/python -c 'import sys, sysconfig; print("cp%d%d-%s" % (*sys.version_info[:2], sysconfig.get_platform().replace("-", "_")))')
VERSION = $(shell $(BIN)/python -c 'import xaiproxy; print(xaiproxy.__version__)')

dist: $(STAMP)
	rm -rf $(DIST)
	$(BIN)/python -m build --no-isolation --outdir $(DIST) .
	$(BIN)/python -m shiv --reproducible -c xaiproxy -p '/usr/bin/env python3' \
		-o $(DIST)/xaiproxy-$(VERSION)-$(TAG).pyz $(DIST)/xaiproxy-$(VERSION)-py3-none-any.whl
	@ls -l $(DIST)

clean:
	rm -rf $(VENV) data *.egg-info build dist

# timmy: `make dashboards` runs the main job, `make test` runs every test. Both set themselves up.
#
#   make dashboards    the swarm service on data/timmy.db (nine personas) and Voilà on loopback;
#                      prints the desktop and mobile URLs; Ctrl-C or `make stop` stops both
#   make stop          stop what `make dashboards` started (from another shell)
#   make venv          .venv with timmy installed editable with every extra (fast when done): by
#                      uv when it can (tools/venv.py; TIMMY_INSTALLER=pip forces pip), one line
#                      per phase
#   make system-deps   the Debian packages in DEBIAN_PACKAGES (apt-get, as root, if missing)
#   make test          ruff, the import-linter contracts of pyproject.toml (layers, no cycles),
#                      the docs build (links checked), then pytest (all but tests marked slow)
#   make docs          the documentation site (MkDocs, docs/ -> site/; --strict: broken links fail)
#   make demo          a seeded 200-task swarm run: table by persona, SQLite file, Parquet export
#   make soak          the long chaos soak (tests/chaos, -m slow; SOAK_TASKS=20000)
#   make pg-start      a PostgreSQL in .pg/ on 127.0.0.1:54329; prints its URL (for --db and
#                      TIMMY_TEST_PG_URL); make pg-stop stops it
#   make bench         every benchmarks/*.py (they print figures, they assert nothing)
#   make lint          ruff only
#   make clean         caches, build output and the demo's files (keeps .venv and data/timmy.db)
#   make distclean     clean, and remove .venv too

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages timmy needs on the machine: chromium (the dashboards' browser tests, driven by
# Playwright; fonts for readable screenshots), espeak-ng (the voice pyttsx3 drives) and
# postgresql (initdb and pg_ctl: the tests start a throwaway PostgreSQL server of their own) and
# prometheus (tests/test_metrics.py scrapes a live `timmy serve --metrics-port` with it).
DEBIAN_PACKAGES ?= chromium fonts-dejavu-core espeak-ng postgresql prometheus

DEMO_ARGS ?=
DASHBOARD_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv system-deps test docs demo dashboards stop soak pg-start pg-stop bench lint clean \
	distclean

venv: system-deps $(STAMP)

# Re-installs only when pyproject.toml changed since the last successful install.
$(STAMP): pyproject.toml
	@$(PYTHON) tools/venv.py $(VENV)
	@touch $@

system-deps:
	@echo "system-deps: checking Debian packages ($(DEBIAN_PACKAGES))"; \
	missing=""; \
	for pkg in $(DEBIAN_PACKAGES); do \
	  dpkg -s "$$pkg" >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then \
	  exit 0; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "system-deps: not root, skipping apt-get; please install:$$missing" >&2; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "system-deps: no apt-get here; please install:$$missing" >&2; \
	else \
	  echo "system-deps: installing$$missing"; \
	  apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: venv
	$(BIN)/ruff check .
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/lint-imports
	$(BIN)/pytest -q -m "not slow" tests notebooks --nbval-lax $(PYTEST_ARGS)

docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

demo: venv
	$(BIN)/timmy demo $(DEMO_ARGS)

dashboards: venv
	$(BIN)/timmy dashboards --db data/timmy.db --create $(DASHBOARD_ARGS)

stop:
	@if [ -x $(BIN)/timmy ]; then $(BIN)/timmy dashboards --db data/timmy.db --stop; \
	else echo "nothing to stop (no $(VENV) yet)"; fi

soak: venv
	$(BIN)/pytest -q -s -m slow tests/chaos $(PYTEST_ARGS)

pg-start: venv
	@$(BIN)/python tests/pgserver.py start .pg

pg-stop:
	@if [ -d .pg ]; then $(BIN)/python tests/pgserver.py stop .pg; fi

bench: venv
	@set -e; for script in benchmarks/*.py; do \
	  echo "== $$script"; $(BIN)/python "$$script"; \
	done

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf build dist site *.egg-info .pytest_cache .ruff_cache .import_linter_cache .hypothesis test-artifacts
	rm -rf data/demo.db data/demo.db-wal data/demo.db-shm data/demo-export
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	-@if [ -d .pg ]; then $(BIN)/python tests/pgserver.py stop .pg; fi; rm -rf .pg
	rm -rf $(VENV)

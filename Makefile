# The two commands of the README: `make demo` and `make test`. Both set up .venv first; `make test`
# also sets up .venv-official (the official bioscan-dataset loader, for the conformance test) and
# runs the linter (ruff, `make lint`) before the tests.
VENV ?= .venv
OFFICIAL_VENV ?= .venv-official
STAMP := $(VENV)/.installed
OFFICIAL_STAMP := $(OFFICIAL_VENV)/.installed

.PHONY: demo test lint install official shards
demo: $(STAMP)
	$(VENV)/bin/bioscan5m-hf demo $(WORKDIR)

test: lint official
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

install: $(STAMP)

$(STAMP): setup.cfg constraints.txt scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

# If it cannot be installed, the conformance test says so and skips; everything else still runs.
official:
	@test -f $(OFFICIAL_STAMP) || { OFFICIAL_VENV=$(OFFICIAL_VENV) bash scripts/install_official.sh \
		&& touch $(OFFICIAL_STAMP); } || echo "warning: could not install the official loader"

shards: $(STAMP)
	$(VENV)/bin/python scripts/make_shards.py

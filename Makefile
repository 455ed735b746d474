# The two commands of the README: `make demo` and `make test`. Both set up .venv first; `make test`
# also sets up .venv-official (the official bioscan-dataset loader, for the conformance test).
VENV ?= .venv
OFFICIAL_VENV ?= .venv-official
STAMP := $(VENV)/.installed
OFFICIAL_STAMP := $(OFFICIAL_VENV)/.installed

.PHONY: demo test install official shards
demo: $(STAMP)
	$(VENV)/bin/bioscan5m-hf demo $(WORKDIR)

test: $(STAMP) official
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

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

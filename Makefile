# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: demo test install shards
demo: $(STAMP)
	$(VENV)/bin/bioscan5m-hf demo $(WORKDIR)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): setup.cfg constraints.txt scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

shards: $(STAMP)
	$(VENV)/bin/python scripts/make_shards.py

# The two commands of the README: `make demo` and `make test`. Both set up .venv first; `make test`
# also sets up .venv-official (the official bioscan-dataset loader, for the conformance test) and
# DALI in .venv (for the tests that read the repo with it), and runs the linter (ruff, `make lint`)
# before the tests.
VENV ?= .venv
OFFICIAL_VENV ?= .venv-official
STAMP := $(VENV)/.installed
OFFICIAL_STAMP := $(OFFICIAL_VENV)/.installed

.PHONY: demo test lint install official dali shards bench
demo: $(STAMP)
	$(VENV)/bin/bioscan5m-hf demo $(WORKDIR)

test: lint official dali
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

# NVIDIA DALI in .venv for the tests that read the repo with it; if it cannot be installed, they say
# so and skip, and everything else still runs.
DALI_STAMP := $(VENV)/.dali-installed
dali: $(STAMP)
	@test -f $(DALI_STAMP) || { VENV=$(VENV) bash scripts/install_dali.sh && touch $(DALI_STAMP); } \
		|| echo "warning: could not install DALI; its tests skip"

shards: $(STAMP)
	$(VENV)/bin/python scripts/make_shards.py

# The benchmark suite (benchmarks/, beside the package): `make bench BENCH_ARGS="--only loader,peers"`.
# The peers area needs scripts/install_peers.sh first; the official loader's figures, .venv-official.
bench: $(STAMP) official
	$(VENV)/bin/python -m benchmarks $(or $(BENCH_DIR),/tmp/bioscan5m-bench) \
		--official-python $(OFFICIAL_VENV)/bin/python --peers-python $(OFFICIAL_VENV)/bin/python $(BENCH_ARGS)

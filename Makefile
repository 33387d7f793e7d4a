# The README's two commands live here:  `make demo`  (set up + run the whole chain)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# DATA: a hvc_data.zip or its extracted folder; empty = the generated demo set.
DATA ?=
OUT ?= out
PRESET ?= demo
# SEED: of the generated demo set (ignored with DATA).
SEED ?= 0

.PHONY: setup browser demo test clean

# -qq: pip's and setuptools' build chatter is not the user's business; errors still show.
$(VENV)/.installed: setup.py pyproject.toml requirements.txt requirements-dev.txt constraints.txt
	@echo "setting up $(VENV) (the first time only: a few minutes)"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -qq --upgrade pip
	@$(PY) -m pip install -qq -c constraints.txt -e ".[dev]"
	@touch $@

setup: $(VENV)/.installed

# Debian's Chromium renders the HTML report in a test; installed when missing and apt-get is usable.
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq chromium) || echo "chromium not installed: the report test will be skipped"; }

demo: setup
	@$(PY) -m pipeline.demo --out $(OUT) --preset $(PRESET) --seed $(SEED) $(if $(DATA),--data $(DATA),)

test: setup browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests tfds_person_attrs

clean:
	rm -rf $(OUT) .pytest_cache

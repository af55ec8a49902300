# Two commands for a new user: `make demo` (the whole pipeline on the embedded
# synthetic default) and `make test` (the test suite). Both create .venv and
# install the pinned stack (constraints.txt) on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgeast-installed
RUN    ?= runs/quickstart

.PHONY: demo test install clean-runs

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[export,test]'
	@touch $(STAMP)

install: $(STAMP)

# pytest exits non-zero when no test ran, so an empty suite fails here too.
test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/edgeast demo --run-dir $(RUN)

clean-runs:
	rm -rf runs/

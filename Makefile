# Two commands on a fresh machine: `make test` and `make demo`.
# Both create .venv in the repo root if it is missing and install the package into it.
PYTHON ?= python3
VENV ?= .venv
# torch/torchvision builds that work together on the development machines (see DEVELOPERS.md);
# override on other hosts, e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.clipdebias-installed

.PHONY: install lint test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# ruff: lint and format check (configured in pyproject.toml); `ruff format .` fixes the format.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest

demo: install
	rm -rf runs/demo  # a fresh run each time (ssl refuses to overwrite a run folder)
	$(VENV)/bin/clipdebias ssl --dataset digits --labels 2-per-class --out runs/demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

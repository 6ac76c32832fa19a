# vlaforge developer entry points. Both targets create/update ./.venv (Python 3.11, CPU torch 2.13.0).
PYTHON ?= python3.11
VENV := .venv
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test install install-test bench clean lerobot-venv

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (the CPU torch 2.13.0 wheel is cp311 only)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip

# torch is pinned in the same pip command as everything else: unpinned, pip would fetch a CUDA build.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q "torch==2.13.0" -e ".[metaworld]"
	@touch $@

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q "torch==2.13.0" -e ".[metaworld,libero,test]"
	$(PIP) install -q --no-deps "openpi-client==0.1.2"
	@touch $@ $(STAMP)

install: $(STAMP)
install-test: $(TEST_STAMP)

## make demo: set up and run the CPU quick start (collect -> train -> eval -> runs/quickstart/report.md)
demo: $(STAMP)
	$(VENV)/bin/vlaforge quickstart

## make test: set up with the test extras, lint, and run the test suite
test: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/inference.py

## make lerobot-venv: a SEPARATE venv with LeRobot's own loader, for the peer row of bench/data.py only (never the
## tests). lerobot 0.4.4 is the last release for Python 3.11 and needs torch<2.11; PyPI has no CPU build of that torch,
## so pip brings torch 2.10.0+cu128 and 15 nvidia-* wheels (8.3 GB, about 7 minutes here). Without FFmpeg 4-8 system
## libraries LeRobot's default video backend (torchcodec) cannot load and the benchmark uses LeRobot's pyav backend.
## bench/data.py finds the venv at .venv-lerobot/bin/python (or --lerobot-python).
LEROBOT_VENV := .venv-lerobot
$(LEROBOT_VENV)/.installed:
	$(PYTHON) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/pip install -q -U pip
	$(LEROBOT_VENV)/bin/pip install -q "lerobot==0.4.4" "torch==2.10.0" "torchvision==0.25.0"
	@touch $@

lerobot-venv: $(LEROBOT_VENV)/.installed

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info

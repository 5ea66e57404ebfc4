# hpa-kernel: `make demo` and `make test` set up everything on a fresh machine.
#
# Torch: timm imports torchvision, so torch and torchvision are installed as a matching pair at the
# Kaggle image's versions (torch 2.10 / torchvision 0.25). The registry's build is a CUDA build; it
# also runs on a CPU. A stamp file keeps it from being reinstalled on every run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.10.0 torchvision==0.25.0 timm==1.0.26
# OpenCV is an extra (see README, "Use it on Kaggle"); the dev setup takes the headless build.
# dev pins scikit-image < 0.25: the 2021 watershed that the kit's own copy is tested against.
EXTRAS := dev,notebooks,opencv
PYTEST_ARGS ?=

.PHONY: demo test test-all venv bench wheels clean-venv

venv: $(VENV)/.hpa-installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"

# The stamp's name carries the pins, so changing TORCH reinstalls torch.
TORCH_STAMP := $(VENV)/.torch-$(shell echo '$(TORCH)' | cksum | cut -d' ' -f1)

$(TORCH_STAMP): | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	@echo "$(TORCH)" > $@

$(VENV)/.hpa-installed: pyproject.toml setup.py $(TORCH_STAMP)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]" $(TORCH)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

demo: venv
	$(BIN)/hpa-kernel demo --out demo_out

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: venv
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

# The offline wheelhouse for Kaggle (needs the package registry once; installing from it does not).
wheels: venv
	$(BIN)/hpa-kernel bundle wheels --out wheels

bench: venv
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)

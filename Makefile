# make demo: set up .venv and upscale the bundled Sentinel-2 sample; make test: set up and run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# torch first, pinned to the CPU build on disk: a bare torch requirement would pull a CUDA build.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: install
	mkdir -p demo-output
	$(BIN)/tiler plan samples/sentinel2_rgb.tif demo-output/sentinel2_rgb_x4.tif --model bicubic
	$(BIN)/tiler upscale samples/sentinel2_rgb.tif demo-output/sentinel2_rgb_x4.tif --model bicubic --overwrite
	$(BIN)/rio info --indent 1 demo-output/sentinel2_rgb_x4.tif

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf demo-output .pytest_cache

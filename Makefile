# make demo: set up .venv and upscale the bundled Sentinel-2 sample with the bundled LDM;
# make test: set up and run the tests; make lint: ruff's checks (CI runs them before the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo lint test clean

install: $(STAMP)

# torch first, pinned to the CPU build on disk: a bare torch requirement would pull a CUDA build.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# The bundled LDM-SR model (trained here on the Sentinel-2 scene the sample comes from, never on the
# sample's own area) with the value range it was trained with and its fast sampler setting.
DEMO_MODEL := --model models/ldm-sr-sentinel2-4x --range 300,2300 --sampler dpm++ --steps 10 \
	--device cpu
DEMO := demo-output/sentinel2_rgb

demo: install
	mkdir -p demo-output
	$(BIN)/tiler plan samples/sentinel2_rgb.tif $(DEMO)_x4.tif $(DEMO_MODEL)
	$(BIN)/tiler upscale samples/sentinel2_rgb.tif $(DEMO)_x4.tif $(DEMO_MODEL) --overwrite
	$(BIN)/tiler upscale samples/sentinel2_rgb.tif $(DEMO)_bicubic_x4.tif --model bicubic --overwrite -q
	$(BIN)/tiler qa $(DEMO)_x4.tif --heatmap $(DEMO)_x4.seams.png --overwrite | tee $(DEMO)_x4.seams.txt
	$(BIN)/python samples/side_by_side.py samples/sentinel2_rgb.tif $(DEMO)_bicubic_x4.tif \
		$(DEMO)_x4.tif demo-output/side_by_side.png --window 150,210,96,96
	$(BIN)/rio info --indent 1 $(DEMO)_x4.tif

# ruff, configured in pyproject.toml: the linter, then the formatter's check
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf demo-output .pytest_cache

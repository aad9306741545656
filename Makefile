# Two commands do all the set-up on a fresh clone:
#   make demo   create .venv, install, match the real Sacre-Coeur pair, write outputs/demo/
#   make test   create .venv, install (with the dev extra), run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
L2M := $(VENV)/bin/l2m
PAIRS ?= ../shared/data/pairs
CKPT := outputs/random_checkpoint

.PHONY: install demo demo-official-layout test test-slow lint speed clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The demo runs l2m-tiny, the small model shipped with the package (no download). With the
# authors' weights: l2m match A B --weights l2mpp-v2 --out DIR.
demo: install
	$(L2M) match $(PAIRS)/sacre_coeur_A.jpg $(PAIRS)/sacre_coeur_B.jpg --out outputs/demo
	@echo "Demo outputs: outputs/demo/correspondences.h5 (keypoints0, keypoints1, certainty, config) and outputs/demo/matches.png"

# The official file layout, offline: random weights written as the authors release them
# (Lightning v2 .ckpt + DINOv2 file), loaded through the same code path as the real files.
$(CKPT)/l2m++_560x560v2.pth.ckpt: | $(VENV)/.installed
	$(L2M) make-checkpoint --out $(CKPT) --layout lightning --calibrate-on $(PAIRS)/sacre_coeur_A.jpg $(PAIRS)/sacre_coeur_B.jpg

demo-official-layout: install $(CKPT)/l2m++_560x560v2.pth.ckpt
	$(L2M) match $(PAIRS)/sacre_coeur_A.jpg $(PAIRS)/sacre_coeur_B.jpg \
		--weights $(CKPT)/l2m++_560x560v2.pth.ckpt --encoder-weights $(CKPT)/dinov2l_distilled.pth \
		--out outputs/demo-official-layout
	@echo "(random weights in the official layout: the matches are meaningless; see README, Weights)"

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

lint: install
	$(VENV)/bin/ruff check l2m_plugin tests benchmarks

speed: install
	$(PY) benchmarks/speed.py

clean:
	rm -rf outputs

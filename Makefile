# Two commands for a new user: `make train` and `make test`. Set-up is idempotent: a second run installs nothing.
# It installs exactly uv.lock into .venv with uv, which it bootstraps from python3 into .tools/ (docs/setup.md).
PYTHON  ?= python3
PY      := .venv/bin/python
DATA    := data/FashionMNIST/raw
SYSDATA := /usr/share/datasets/fashion-mnist
UV_VERSION := 0.13.9
UV      := .tools/bin/uv
UVSTAMP := .tools/.uv-$(UV_VERSION)
NBMARK  := .venv/.with-notebook
LINTED  := softmax_lightning scripts tests notebooks/softmax_regression.py
# .venv = uv.lock, package for package (this project editable): the test extra always, the notebook extra once
# `make notebook` has installed it. --locked fails if pyproject.toml and uv.lock disagree. With nothing to change it
# checks and installs nothing (about 0.1 s), so it runs every time and also undoes changes made to .venv by hand.
SYNC    = $(UV) sync --locked --python $(PYTHON) --extra test

.PHONY: train test lint setup data fonts benchmark exercises notebook notebook-outputs tensorboard test-latest \
        test-oldest lock mutate fuzz clean

train: setup data
	$(PY) scripts/train.py $(ARGS)

# The test suite, then the linter (so that a formatting finding never hides a test result). The tests run in one
# process per core (pytest-xdist), each with one torch thread unless OMP_NUM_THREADS says otherwise: on 2 cores about
# 6 minutes instead of 11. PYTEST_ARGS="-n 0" runs them in this one process.
PYTEST_RUN = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(1) -m pytest -n auto
test: setup data
	$(call PYTEST_RUN,$(PY)) $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory lint

# ruff's findings (rules in pyproject.toml), then the files `ruff format` would change; fails if either finds any.
lint: setup
	.venv/bin/ruff check $(LINTED); found=$$?; .venv/bin/ruff format --check $(LINTED) && exit $$found

# Break the code on purpose, one mutant at a time, and check that a test fails (docs/mutation.md; about 10 minutes).
mutate: setup data
	$(PY) scripts/mutate.py $(ARGS)

# The Hypothesis fuzz of train.py's and predict.py's options, long: 1000 examples per test instead of make test's few.
fuzz: setup data
	FUZZ_EXAMPLES=$(or $(EXAMPLES),1000) $(PY) -m pytest tests/test_fuzz.py -q --hypothesis-show-statistics $(PYTEST_ARGS)

benchmark: setup data
	$(PY) scripts/benchmark.py $(ARGS)

exercises: setup data
	$(PY) -m softmax_lightning.exercises all

# TensorBoard from .venv on the runs in lightning_logs/ (no need to activate the venv): http://localhost:6006
tensorboard: setup
	.venv/bin/tensorboard --logdir lightning_logs $(ARGS)

# Into a log file or a pipe (not a terminal), uv is --quiet: no list of the 109 packages in `make train > train.log`.
setup: $(UVSTAMP) fonts
	$(SYNC) $(if $(wildcard $(NBMARK)),--extra notebook) $$([ -t 1 ] || echo --quiet)

# uv itself, pinned, in a small venv of its own made with python3 (nothing to install by hand). python3's own pip
# installs it there (quicker than a venv with pip inside); without a usable pip, the venv gets one from ensurepip.
$(UVSTAMP):
	rm -rf .tools
	$(PYTHON) -m venv --without-pip .tools
	$(PYTHON) -m pip --python .tools/bin/python install -q --disable-pip-version-check uv==$(UV_VERSION) || \
	  (.tools/bin/python -m ensurepip >/dev/null && .tools/bin/python -m pip install -q --disable-pip-version-check \
	   uv==$(UV_VERSION))
	touch $@

# Re-resolve uv.lock from pyproject.toml (the one command that writes it; commit the result).
lock: $(UVSTAMP)
	$(UV) lock

# The test suite on the newest releases that pyproject.toml allows (test-latest), or on the oldest that its lower
# bounds allow (test-oldest), in a throwaway venv (.venv-latest/ or .venv-oldest/, rebuilt each time; uv.lock and
# .venv are untouched). The versions it ran with are printed first; the test that .venv matches uv.lock is left out.
test-latest test-oldest: $(UVSTAMP) data fonts
	rm -rf $(@:test-%=.venv-%)
	$(UV) venv -q --python $(PYTHON) $(@:test-%=.venv-%)
	$(UV) pip install -q --python $(@:test-%=.venv-%)/bin/python --no-config \
	  --resolution $(if $(filter test-oldest,$@),lowest-direct,highest) -e '.[test]'
	$(UV) pip list --python $(@:test-%=.venv-%)/bin/python
	$(call PYTEST_RUN,$(@:test-%=.venv-%)/bin/python) --deselect tests/test_lock.py::test_installed_packages_match_lock \
	  $(PYTEST_ARGS)

# The chapter as a Jupyter notebook: JupyterLab (the `notebook` extra, which `make train` / `make test` skip), this
# .venv registered as the kernel "softmax-lightning (.venv)", then JupyterLab on the notebook. Offline, on data/.
notebook: $(UVSTAMP) fonts data
	$(SYNC) --extra notebook
	touch $(NBMARK)
	$(PY) -m ipykernel install --user --name softmax-lightning --display-name "softmax-lightning (.venv)"
	.venv/bin/jupyter lab --notebook-dir=. notebooks/softmax_regression.ipynb

# Execute notebooks/softmax_regression.py in a fresh kernel and store the outputs in notebooks/softmax_regression.ipynb.
notebook-outputs: setup data
	$(PY) scripts/build_notebook.py

# Fashion-MNIST: already in data/, else Debian's dataset-fashion-mnist (installed here when apt-get exists),
# else torchvision's download at run time (needs internet).
data:
	@if [ -f $(DATA)/t10k-labels-idx1-ubyte ] || [ -f $(SYSDATA)/t10k-labels-idx1-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
	  echo "could not install dataset-fashion-mnist; training will try torchvision's download"; \
	fi

# A CJK font for `--labels zh` figures (optional: without one, figures fall back to English with a warning).
fonts:
	@if ! fc-list 2>/dev/null | grep -qi 'Noto Sans CJK' && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get install -y -qq fonts-noto-cjk >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq fonts-noto-cjk >/dev/null 2>&1)) || \
	  echo "could not install fonts-noto-cjk; --labels zh will fall back to English"; \
	fi

clean:
	rm -rf lightning_logs benchmark.json mutation-report.json .venv-latest .venv-oldest

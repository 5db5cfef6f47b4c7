# Two commands for a new user: `make train` and `make test`. Set-up is idempotent: a second run installs nothing.
PY      := .venv/bin/python
DATA    := data/FashionMNIST/raw
SYSDATA := /usr/share/datasets/fashion-mnist
STAMP   := .venv/.installed
NBSTAMP := .venv/.notebook-installed

.PHONY: train test setup data fonts benchmark exercises notebook notebook-outputs clean

train: setup data
	$(PY) scripts/train.py $(ARGS)

test: setup data
	$(PY) -m pytest $(PYTEST_ARGS)

benchmark: setup data
	$(PY) scripts/benchmark.py $(ARGS)

exercises: setup data
	$(PY) -m softmax_lightning.exercises all

setup: $(STAMP) fonts

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# The chapter as a Jupyter notebook: JupyterLab (the `notebook` extra, which `make train` / `make test` skip), this
# .venv registered as the kernel "softmax-lightning (.venv)", then JupyterLab on the notebook. Offline, on data/.
notebook: setup data $(NBSTAMP)
	$(PY) -m ipykernel install --user --name softmax-lightning --display-name "softmax-lightning (.venv)"
	.venv/bin/jupyter lab --notebook-dir=. notebooks/softmax_regression.ipynb

$(NBSTAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[notebook]'
	touch $(NBSTAMP)

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
	rm -rf lightning_logs benchmark.json

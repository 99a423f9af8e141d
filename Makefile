# make run   set up, fetch the data, execute the notebook headless into runs/<name>/
# make test  set up, fetch the data, run the test suite
# make lab   open Jupyter Lab on the project's venv
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
RAW := data/FashionMNIST/raw
NAME ?= $(shell date +%Y%m%d-%H%M%S)
RUN := runs/$(NAME)
ARGS ?=

.PHONY: setup data run test lab clean

# Re-installs only when requirements.txt is newer than the last install.
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

data: $(STAMP)
	$(PY) my_utils.py

run: data
	mkdir -p $(RUN)
	$(PY) -m papermill --cwd notebooks notebooks/fashion_mnist_mlp.ipynb $(RUN)/fashion_mnist_mlp.ipynb \
		-p out_dir $(CURDIR)/$(RUN) $(ARGS)
	@echo "run files in $(RUN)/: fashion_mnist_mlp.ipynb metrics.json curves.png model.pt"
	@$(PY) -c "import json; m=json.load(open('$(RUN)/metrics.json')); print(f\"test acc {m['test_acc']:.4f}, val acc {m['val_acc']:.4f}, {m['train_seconds']:.0f}s training on {m['hardware']}\")"

test: data
	$(PY) -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/fashion_mnist_mlp.ipynb

clean:
	rm -rf runs .pytest_cache

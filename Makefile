# make run   set up, fetch the data, execute the notebook headless into runs/<name>/
# make test  set up, fetch the data, run the test suite
# make lab   open Jupyter Lab on the project's venv
# make bench the side-by-side training speed benchmark -> bench.json
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
RAW := data/FashionMNIST/raw
NAME ?= $(shell date +%Y%m%d-%H%M%S)
RUN := runs/$(NAME)
ARGS ?=

.PHONY: setup data run test lab bench clean

# Re-installs only when requirements.txt is newer than the last install.
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

data: $(STAMP)
	$(PY) my_utils.py

# The whole run, kernel start to saved files, is timed into $(RUN)/wall.json.
run: data
	@mkdir -p $(RUN) && start=$$(date +%s) && \
	$(PY) -m papermill --cwd notebooks notebooks/fashion_mnist_mlp.ipynb $(RUN)/fashion_mnist_mlp.ipynb \
		-p out_dir $(CURDIR)/$(RUN) $(ARGS) && \
	echo "{\"notebook_wall_seconds\": $$(( $$(date +%s) - start ))}" > $(RUN)/wall.json
	@echo "run files in $(RUN)/: fashion_mnist_mlp.ipynb metrics.json curves.png model.pt wall.json"
	@$(PY) -c "import json; m, w = (json.load(open(f'$(RUN)/{f}.json')) for f in ('metrics', 'wall')); \
	print(f\"test acc {m['test_acc']:.4f}, val acc {m['val_acc']:.4f}, {m['train_seconds']:.0f}s training, \"\
	f\"{w['notebook_wall_seconds']:.0f}s notebook, on {m['hardware']}\")"

test: data
	$(PY) -m pytest

# The speed benchmark (about 15 minutes on a 2-core CPU; BENCH_ARGS=--quick for a smoke run).
bench: data
	$(PY) bench.py --out $(or $(BENCH_OUT),bench.json) $(BENCH_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/fashion_mnist_mlp.ipynb

clean:
	rm -rf runs .pytest_cache

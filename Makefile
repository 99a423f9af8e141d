# make run   set up, fetch the data, execute the notebook headless into runs/<name>/
# make test  set up, fetch the data, run the test suite
# make lab   open Jupyter Lab on the project's venv
# make bench the side-by-side training speed benchmark -> bench.json
# make speed the speed table: every compared network timed in interleaved rounds -> results/speed/<cpu>.json
# make study the patch-size study notebook (K = 2, 4, 7; equal epochs and equal time) -> results/patch_study.json, .png
# make search FAMILY=cnn AT=600 TRIALS=32   the recipe search (Optuna) at AT development-CPU seconds (STORAGE=URL: shared)
# make dashboard             optuna-dashboard over the studies on http://localhost:8080
# make seeds PRESET=best SEEDS="0 1 2" TAG=gpu   train.py runs kept in results/runs/ (FORCE=1 replaces records)
# make seed-curve EPOCHS=3   the seed network, test accuracy after every epoch, kept in results/runs/
# make gpu-results           every GPU result in one command (no venv: the machine's own python3 + torch)
# make tensorboard           TensorBoard over runs/ on http://localhost:6006 (every run writes its events there)
# make clean                 caches only; make clean-runs deletes runs/ (your trained models), saying so
# make trial NAME=x ARGS='--preset quick --set patch=7' BUDGET=600   a budgeted train.py run kept in results/trials/
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
RAW := data/FashionMNIST/raw
NAME ?= $(shell date +%Y%m%d-%H%M%S)
RUN := runs/$(NAME)
ARGS ?=
PRESET ?= quick
SEEDS ?= 0 1 2
TAG ?= local
EPOCHS ?= 3

GPU_OUT ?= gpu-results
BUDGET ?= 600
FAMILY ?= cnn
AT ?= 600
TRIALS ?= 32
PORT ?= 8080

.PHONY: setup data browser run test lab bench speed study search dashboard seeds seed-curve gpu-results trial tensorboard clean clean-runs

# The project, installed editable with its notebook and test extras (pyproject.toml). Re-installs only when
# pyproject.toml or constraints.txt is newer than the last install. The constraints are the versions the suite
# last passed with (a fresh clone next year installs those, not whatever is newest).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[test]" -c constraints.txt
	touch $(STAMP)

setup: $(STAMP)

data: $(STAMP)
	$(PY) -m mlp.data

# The whole run, kernel start to saved files, is timed into $(RUN)/wall.json.
run: data
	@mkdir -p $(RUN) && start=$$(date +%s) && \
	$(PY) -m mlp.notebook --cwd notebooks notebooks/fashion_mnist_mlp.ipynb $(RUN)/fashion_mnist_mlp.ipynb \
		-p out_dir $(CURDIR)/$(RUN) -p command "make run" $(ARGS) && \
	echo "{\"notebook_wall_seconds\": $$(( $$(date +%s) - start ))}" > $(RUN)/wall.json
	@echo "run files in $(RUN)/: fashion_mnist_mlp.ipynb metrics.json curves.png model.pt wall.json"
	@$(PY) -c "import json; m, w = (json.load(open(f'$(RUN)/{f}.json')) for f in ('metrics', 'wall')); \
	print(f\"test acc {m['test_acc']:.4f}, val acc {m['val_acc']:.4f}, {m['train_seconds']:.0f}s training, \"\
	f\"{w['notebook_wall_seconds']:.0f}s notebook, on {m['hardware']}\")"

# The browser test needs Debian's chromium: installed here when we are root on Debian/Ubuntu (else it skips,
# and says how to enable it; with CI=true it fails instead).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; } || \
		echo "chromium not installed: the browser test will skip (CI fails it)"

test: data browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# The speed benchmark (its longest part trains `quick` to 90 % validation: 453 s of the AVX2 CPU in
# results/bench_cpu.json; BENCH_ARGS=--quick for a smoke run).
bench: data
	$(PY) -m tools.bench --out $(or $(BENCH_OUT),bench.json) $(BENCH_ARGS)

# The speed table that every cost on the pages comes from (mlp/speed.py): each network the pages compare, timed
# in interleaved rounds, at least 5 without load; SPEED_ARGS=--candidates adds the searches' networks
# (~12 minutes of the development CPU), SPEED_ARGS="--only quick cnn-600" times a few.
speed: data
	$(PY) -m tools.speed $(SPEED_ARGS)
	$(PY) -m tools.render

# ARGS: papermill parameters, e.g. ARGS='-y "arms: [quick@10ep]" -y "seeds: [0]"'. Resumes from results/patch_study.json.
study: data
	@mkdir -p $(RUN)
	$(PY) -m mlp.notebook --cwd notebooks notebooks/patch_size_study.ipynb $(RUN)/patch_size_study.ipynb $(ARGS)
	$(PY) -m tools.render

# A record in results/ is a result the tables cite: refused before training if it exists; FORCE=1 replaces it.
REPLACE := $(if $(FORCE),--force)
define refuse_existing
	@for f in $(1); do if [ -e $$f ] && [ -z "$(FORCE)" ]; then \
		echo "error: $$f already holds a record; choose another TAG/NAME, or FORCE=1 to replace it" >&2; exit 1; fi; done
endef

# The recipe search of a family at a budget (mlp/search.py, docs/search.md): trials until the study has TRIALS
# finished; run it again to continue, on as many machines as share STORAGE (a database URL; default: the journal
# results/studies/search.journal). Then `python -m tools.search status|adopt|seeds ...`.
search: data
	$(PY) -m tools.search $(if $(STORAGE),--storage $(STORAGE)) search $(FAMILY) $(AT) --trials $(TRIALS) \
		$(if $(FROM),--from $(FROM)) $(SEARCH_ARGS)

# optuna-dashboard over every study, on http://localhost:$(PORT) (STORAGE=URL: a shared database's instead).
dashboard: $(STAMP)
	$(VENV)/bin/optuna-dashboard --host localhost --port $(PORT) \
		$(or $(STORAGE),--storage-class JournalFileStorage results/studies/search.journal)

seeds: data
	$(call refuse_existing,$(foreach s,$(SEEDS),results/runs/$(PRESET)-$(TAG)-seed$(s).json))
	for s in $(SEEDS); do \
		$(PY) train.py --preset $(PRESET) --seed $$s --out runs/$(PRESET)-$(TAG)-seed$$s --quiet $(ARGS) || exit 1; done
	$(PY) -m tools.render $(REPLACE) --record-run $(foreach s,$(SEEDS),runs/$(PRESET)-$(TAG)-seed$(s))

seed-curve: data
	$(call refuse_existing,results/runs/seed-curve-$(TAG).json)
	$(PY) train.py --preset seed --epochs $(EPOCHS) --test-curve --out runs/seed-curve-$(TAG) --quiet $(ARGS)
	$(PY) -m tools.render $(REPLACE) --record-run runs/seed-curve-$(TAG)

# On a CUDA machine, with or without a venv; FASHION_MNIST_DIR=... where the data was carried along.
gpu-results:
	$(PYTHON) -m tools.gpu_results --out $(GPU_OUT) $(ARGS)
	@echo "then: cp -r $(GPU_OUT)/runs $(GPU_OUT)/*.json $(GPU_OUT)/*.png results/ && $(PY) -m tools.render"

# One frontier trial: train.py with a training-time budget, fp32, kept in results/trials/$(NAME).json.
trial: data
	$(call refuse_existing,results/trials/$(NAME).json)
	$(PY) train.py --precision fp32 --max-seconds $(BUDGET) --out runs/$(NAME) --quiet $(ARGS)
	$(PY) -m tools.render $(REPLACE) --record-trial runs/$(NAME)

# LAB_ARGS: more jupyter lab options (the browser test passes a port, a token and --no-browser).
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) notebooks/fashion_mnist_mlp.ipynb $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# TB_ARGS: more tensorboard options (e.g. --port 6007, --logdir_spec a:runs/x,b:runs/y).
tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs --host localhost $(TB_ARGS)

# Caches only: runs/ holds your trained models and is left alone (make clean-runs).
clean:
	rm -rf .pytest_cache .ruff_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +

clean-runs:
	@echo "deleting runs/: $$(ls runs 2>/dev/null | wc -l) run directories (models, checkpoints, TensorBoard events)"
	rm -rf runs

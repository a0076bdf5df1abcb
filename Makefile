# transfer-suite: every target sets up the environment first (tools/setup.sh, seconds when done).
PY      := .venv/bin/python
PROFILE ?= tiny
ARGS    ?=
JOBS    ?= auto
DATA_ROOT ?=
STUDY   ?= segmentation
PARTITION ?=
NODES   ?= 1
GPUS_PER_NODE ?= 0
TIME    ?= 04:00:00
RUNS_PER_TASK ?= 1
DRY_RUN ?=
RUN     = $(PY) -m benchmarks
JOBS_ARG = --jobs $(JOBS)
DATA_ARG = $(if $(DATA_ROOT),--data-root $(DATA_ROOT),)
SLURM_ARGS = --partition "$(PARTITION)" --nodes $(NODES) --gpus-per-node $(GPUS_PER_NODE) --time $(TIME) --runs-per-task $(RUNS_PER_TASK) $(if $(DRY_RUN),--dry-run,)
STUDIES := segmentation finetune transfer maml
# slurm-<name> also for the studies the CLI registers from TSUITE_EXTRA_STUDIES="name=module:Class,..." (the tests' digits)
comma := ,
SLURM_STUDIES := $(sort $(STUDIES) $(foreach s,$(subst $(comma), ,$(TSUITE_EXTRA_STUDIES)),$(firstword $(subst =, ,$(s)))))

.PHONY: help install test test-slurm test-gpu lint perf report dashboards slurm-status clean \
        $(addprefix bench-,$(STUDIES)) $(addprefix slurm-,$(SLURM_STUDIES))

help: ## list the targets
	@grep -hE '^[a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-20s %s\n", $$1, $$2}'
	@echo "  slurm-<study>        submit a study to SLURM (PARTITION= NODES= GPUS_PER_NODE= TIME= RUNS_PER_TASK= DRY_RUN=1);"
	@echo "                       also for studies registered in TSUITE_EXTRA_STUDIES (e.g. slurm-digits in the tests)"
	@echo "  variables: PROFILE=tiny|smoke|paper JOBS=auto|1|N DATA_ROOT=/data ARGS='--set key=value' STUDY=<study>"

install: ## set up .venv (pinned packages, learn2learn for Python 3.11, Debian data packages)
	@bash tools/setup.sh

test: install ## the whole test suite (SLURM tests run when a SLURM is up, else skip with a reason)
	$(PY) -m pytest -q

test-slurm: install ## only the tests that need a running SLURM (tools/start_slurm.sh starts one)
	$(PY) -m pytest -q -m slurm

test-gpu: install ## the GPU tests (need CUDA; they skip with a reason elsewhere)
	$(PY) -m pytest -q -m gpu

lint: install ## ruff
	$(PY) -m ruff check .

perf: install ## performance vs peers side by side (ratios, medians); writes results/perf.json
	$(PY) -m benchmarks.perf $(ARGS)

bench-segmentation: install ## study 1: which encoder to transfer, is a decoder worth transferring
	$(RUN) segmentation --profile $(PROFILE) $(JOBS_ARG) $(DATA_ARG) $(ARGS)

bench-finetune: install ## study 2: head-only vs full fine-tuning, per-layer similarity
	$(RUN) finetune --profile $(PROFILE) $(JOBS_ARG) $(DATA_ARG) $(ARGS)

bench-transfer: install ## study 4: block shuffle, CKA, barriers, criticality, checkpoints
	$(RUN) transfer --profile $(PROFILE) $(JOBS_ARG) $(DATA_ARG) $(ARGS)

bench-maml: install ## study 3: MAML/ANIL representation change in the inner loop
	$(RUN) maml --profile $(PROFILE) $(JOBS_ARG) $(DATA_ARG) $(ARGS)

# A static pattern rule: a plain pattern rule never builds a target listed as .PHONY ("Nothing to be done").
$(addprefix slurm-,$(SLURM_STUDIES)): slurm-%: install
	$(RUN) slurm $* --profile $(PROFILE) $(DATA_ARG) $(SLURM_ARGS) $(ARGS)

slurm-status: install ## pending / running / finished / failed runs of STUDY
	$(RUN) status $(STUDY) --profile $(PROFILE) $(ARGS)

dashboards: install ## write results/$(STUDY)/dashboard.json, the W&B dashboard (ARGS='--wandb online' saves it)
	$(RUN) dashboards $(STUDY) --profile $(PROFILE) $(ARGS)

report: install ## rebuild results/$(STUDY)/report.md from the finished runs
	$(RUN) report $(STUDY) --profile $(PROFILE) $(ARGS)

clean: ## remove results and caches of this checkout (keeps .venv and ~/.cache/transfer-suite)
	rm -rf results .pytest_cache .ruff_cache lightning_logs wandb

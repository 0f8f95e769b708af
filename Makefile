# Davchev et al. 2019, "Towards Evaluating and Understanding Robust Optimisation under Transfer", as a pipeline
# that reads like the paper's Figure 1:
#
#   CIFAR-100 sources (nat, fgsm, pgd) --transfer.py (1 | 12 | 56 unfrozen; nat | fgsm | pgd target)--> CIFAR-10
#   CIFAR-10 baselines R_nat, R_fgsm, R_pgd                            DenseNet121 --> black-box examples
#                     every CIFAR-10 model --evaluate.py--> X.eval.json --report.py--> Table 1, Figures 2-5
#
# `make` prints help. Checkpoints are the targets: an interrupted `make all` redoes only what is missing, and a
# training cut off mid-way resumes from its last epoch. Narrow the grid on the command line, e.g.
#   make SRC=pgd TGT=pgd UNFREEZE=12 BASE= all
# and `make -n TARGET` prints the exact command of any cell.

.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
.SECONDARY:            # keep checkpoints that are only intermediate (sources) when a later stage fails
SHELL := bash
.SHELLFLAGS := -eo pipefail -c

# ---- the grid ----------------------------------------------------------------------------------------------
# how the CIFAR-100 source is trained
SRC      ?= nat fgsm pgd
# how the transfer trains on CIFAR-10
TGT      ?= nat fgsm pgd
# the three strategies
UNFREEZE ?= 1 12 56
# CIFAR-10 baselines without transfer
BASE     ?= nat fgsm pgd
# several seeds: the report shows mean ± std and n
SEEDS    ?= 0
# one black-box DenseNet121 serves every seed
BB_SEED  ?= 0

# ---- settings (defaults: the paper's protocol, PROTOCOL.md) -------------------------------------------------
# everything this pipeline writes
RUN       ?= runs/paper
# torchvision root (downloads), a folder of *_{train,test}.npz, or 'synthetic'
DATA      ?= data
ARCH      ?= resnet56
EPOCHS_SRC ?= 200
EPOCHS_TL  ?= 50
EPOCHS_BB  ?= 200
# extra flags for every training, e.g. --batch-size 128 --device cuda
TRAIN_FLAGS ?=
# extra flags for the DenseNet121, e.g. --growth 32
BB_FLAGS    ?=
# extra flags for every evaluation, e.g. --no-strong --limit 1000
EVAL_FLAGS  ?=
# prefix of every job: $(GPULOCK) on a multi-GPU box, or srun --gres=gpu:1 ...
LAUNCH      ?=

# Python: a .venv built from requirements.txt on first use; PY=python3 uses an existing environment instead.
PY ?= .venv/bin/python
VENV := $(if $(filter .venv/bin/python,$(PY)),.venv/installed)

# `make -j N LAUNCH='$(GPULOCK)'`: each job takes a free GPU (SLOTS jobs per GPU) through flock and waits for
# one when all are busy. Several PGD trainings of a small ResNet56 can share one large GPU: SLOTS=2 or 3.
NGPU  ?= $(shell nvidia-smi -L 2>/dev/null | wc -l)
SLOTS ?= 1
GPULOCK = bash -c 'while :; do for g in $$(seq 0 $$(($(NGPU) - 1))); do for s in $$(seq $(SLOTS)); do \
  exec 9>"$${TMPDIR:-/tmp}/gpulock.$$g.$$s"; if flock -n 9; then export CUDA_VISIBLE_DEVICES=$$g; exec "$$@"; fi; \
  done; done; sleep 10; done' gpulock

R := $(RUN)
DATAFLAG = --data-dir $(DATA)
LOG = 2>&1 | tee -a $(basename $@).log

# ---- what `all` builds -------------------------------------------------------------------------------------
seeds_of = $(foreach n,$(SEEDS),$(1)_s$(n).pt)
SOURCES   := $(foreach a,$(SRC),$(call seeds_of,$(R)/source/cifar100_$(a)))
BASELINES := $(foreach a,$(BASE),$(call seeds_of,$(R)/baseline/cifar10_$(a)))
TRANSFERS := $(foreach s,$(SRC),$(foreach t,$(TGT),$(foreach u,$(UNFREEZE),$(call seeds_of,$(R)/transfer/$(s)-$(t)-$(u)))))
BLACKBOX  := $(R)/blackbox/densenet121_s$(BB_SEED).pt
EXAMPLES  := $(R)/blackbox/examples.pt
MODELS    := $(SOURCES) $(BASELINES) $(TRANSFERS) $(BLACKBOX)
EVALS     := $(MODELS:.pt=.eval.json)

.PHONY: help all sources baselines transfers blackbox evals report smoke mini test test-slurm gpu-check bench clean-smoke
help:
	@echo "make smoke      the whole pipeline on built-in synthetic data, CPU, a few minutes -> runs/smoke/report"
	@echo "make test       the tests (includes make smoke)"
	@echo "make all        the paper on a GPU: 3 sources, 3 baselines, 27 transfers, DenseNet121, evaluations, report"
	@echo "make mini DATA=FOLDER   the whole grid on small real subsets (npz), scaled down, on a GPU -> runs/mini"
	@echo "make bench      training/evaluation throughput: eager, captured, cohorts, a plain PyTorch reference"
	@echo "make test-slurm make smoke through a private single-node SLURM (installs slurm-wlm and munge)"
	@echo "make gpu-check DATA=FOLDER   on a CUDA machine: GPU tests, bench, a timed make mini"
	@echo "stages: sources baselines transfers blackbox evals report; grid: SRC TGT UNFREEZE BASE SEEDS"
	@echo "settings: RUN=$(R) DATA=$(DATA) ARCH=$(ARCH) PY=$(PY) LAUNCH=$(LAUNCH)"
	@echo "e.g.  make SRC=pgd TGT=pgd UNFREEZE=12 BASE= all;   make -n $(R)/transfer/pgd-pgd-12_s0.pt"

all: report
sources: $(SOURCES)
baselines: $(BASELINES)
transfers: $(TRANSFERS)
blackbox: $(EXAMPLES)
evals: $(EVALS)
report: $(R)/report/report.md

ifneq ($(VENV),)
$(VENV): requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -r requirements.txt
	touch $@
endif

# ---- training ----------------------------------------------------------------------------------------------
# One command trains a cohort: every seed of a source or baseline, and every strategy and seed of a transfer
# (transfer.py --unfreeze 1 12 56 --seed 0 ...), each model still its own target with the files its own run would
# write. A pattern rule with several targets runs its recipe once for all of them, in every GNU Make (4.2 too).
# Code is an order-only prerequisite (after |): editing it never retrains a finished model. A training started
# for some members skips the others that are finished (X.pt newer than its source) and resumes any cut off.
src_of = $(word 1,$(subst -, ,$(1)))
tgt_of = $(word 2,$(subst -, ,$(1)))
TRAIN = --arch $(ARCH) --seed $(SEEDS) $(DATAFLAG) $(TRAIN_FLAGS)

$(call seeds_of,$(R)/source/cifar100_%): | train_source.py common.py $(VENV)
	$(LAUNCH) $(PY) train_source.py --dataset cifar100 --adv $* --epochs $(EPOCHS_SRC) $(TRAIN) \
	  --out '$(R)/source/cifar100_$*_s{seed}.pt'

$(call seeds_of,$(R)/baseline/cifar10_%): | train_source.py common.py $(VENV)
	$(LAUNCH) $(PY) train_source.py --dataset cifar10 --adv $* --epochs $(EPOCHS_SRC) $(TRAIN) \
	  --out '$(R)/baseline/cifar10_$*_s{seed}.pt'

# The stem is source-target, e.g. pgd-fgsm; each cohort needs its own source, one per seed.
.SECONDEXPANSION:
$(foreach u,$(UNFREEZE),$(call seeds_of,$(R)/transfer/%-$(u))): \
  $$(call seeds_of,$(R)/source/cifar100_$$(call src_of,$$*)) | transfer.py common.py $(VENV)
	$(LAUNCH) $(PY) transfer.py --src $(call src_of,$*) --tgt $(call tgt_of,$*) --unfreeze $(UNFREEZE) \
	  --epochs $(EPOCHS_TL) $(TRAIN) --init '$(R)/source/cifar100_{src}_s{seed}.pt' \
	  --out '$(R)/transfer/{src}-{tgt}-{unfreeze}_s{seed}.pt'

$(R)/blackbox/densenet121_s%.pt: | train_blackbox.py common.py $(VENV)
	$(LAUNCH) $(PY) train_blackbox.py --seed $* --epochs $(EPOCHS_BB) $(DATAFLAG) $(TRAIN_FLAGS) $(BB_FLAGS) --out $@

# ---- evaluation --------------------------------------------------------------------------------------------
# The black-box examples are crafted once on the DenseNet121 and reused by every CIFAR-10 evaluation.
$(EXAMPLES): $(BLACKBOX) | evaluate.py common.py
	$(LAUNCH) $(PY) evaluate.py --craft-from $< --out $@ $(DATAFLAG) $(EVAL_FLAGS) --force $(LOG)

# CIFAR-100 sources: white-box columns on the CIFAR-100 test set. The DenseNet: its clean and white-box accuracy.
$(R)/source/%.eval.json: $(R)/source/%.pt | evaluate.py common.py
	$(LAUNCH) $(PY) evaluate.py --ckpt $< --out $@ $(DATAFLAG) $(EVAL_FLAGS) --force $(LOG)

$(R)/blackbox/%.eval.json: $(R)/blackbox/%.pt | evaluate.py common.py
	$(LAUNCH) $(PY) evaluate.py --ckpt $< --out $@ $(DATAFLAG) $(EVAL_FLAGS) --no-strong --no-curve --force $(LOG)

%.eval.json: %.pt $(EXAMPLES) | evaluate.py common.py
	$(LAUNCH) $(PY) evaluate.py --ckpt $< --blackbox $(EXAMPLES) --out $@ $(DATAFLAG) $(EVAL_FLAGS) --force $(LOG)

$(R)/report/report.md: $(EVALS) | report.py
	$(PY) report.py --run $(R) --out $(R)/report

# ---- smoke, tests, benchmark -------------------------------------------------------------------------------
# The same DAG on built-in synthetic data with tiny settings, in its own output tree, on CPU. Tuned so that no model
# is a constant-class predictor (evaluate.py flags one, and a flagged row decides no claim): batch 25 and 2 epochs
# give every model 30 steps; adversarial training at eps 2/256 with PGD-3 (evaluation stays at eps 8, PGD-7),
# since a PGD source at eps 8 on 380 images of 100 classes learns near-constant features whose transfers predict
# one class; a growth-4 DenseNet121 learns (58% clean) in the time a growth-12 one stayed at chance.
SMOKE_RUN ?= runs/smoke
SMOKE = RUN=$(SMOKE_RUN) DATA=synthetic ARCH=resnet8 EPOCHS_SRC=2 EPOCHS_TL=2 EPOCHS_BB=2 SEEDS=0 \
  SRC='nat fgsm pgd' TGT='nat fgsm pgd' UNFREEZE='1 12 56' BASE='nat fgsm pgd' LAUNCH='$(SMOKE_LAUNCH)' \
  TRAIN_FLAGS='--limit 400 --batch-size 25 --eps 2 --steps 3 --device cpu' BB_FLAGS='--growth 4 --limit 400' \
  EVAL_FLAGS='--limit 50 --strong-steps 5 --restarts 2 --curve-eps 0 8 32 --device cpu'
# the smoke's job prefix (empty: local); test-slurm sets it to an srun job step
SMOKE_LAUNCH ?=
# One thread per job and one job per core: small models gain nothing from intra-op threads.
NPROC := $(shell nproc 2>/dev/null || echo 2)
smoke: | $(VENV)
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory -j$(NPROC) $(SMOKE) all
	@echo "smoke report: $(SMOKE_RUN)/report/report.md"

# The whole grid on real images at a small scale: a folder of cifar10/cifar100_{train,test}.npz (e.g. 8,000 + 1,000
# images each), the protocol's schedule shape at 10/4/6 epochs, every test image of the folder, a lighter strong
# attack. Meant for one GPU, through the captured cohort path; the first real-data result to look at.
MINI_RUN  ?= runs/mini
MINI_JOBS ?= 4
MINI = RUN=$(MINI_RUN) EPOCHS_SRC=10 EPOCHS_TL=4 EPOCHS_BB=6 SEEDS=0 \
  EVAL_FLAGS='--strong-steps 20 --restarts 3 --curve-eps 0 2 4 8 16 32'
mini: | $(VENV)
	@test -d "$(DATA)" && ls "$(DATA)"/cifar10_train.npz "$(DATA)"/cifar100_train.npz >/dev/null 2>&1 || { \
	  echo "error: make mini needs DATA=FOLDER holding cifar10_{train,test}.npz and cifar100_{train,test}.npz"; exit 2; }
	$(MAKE) --no-print-directory -j$(MINI_JOBS) $(MINI) all
	@echo "mini report: $(MINI_RUN)/report/report.md"

# On a CUDA machine: the GPU tests, the benchmark, and `make mini` timed (DATA=FOLDER as for mini).
gpu-check: | $(VENV)
	$(PY) -m pytest -q tests/test_gpu.py
	$(PY) bench.py --out runs/bench-gpu.json
	/usr/bin/time -f "make mini: %e s wall" $(MAKE) --no-print-directory mini

clean-smoke:
	rm -rf $(SMOKE_RUN)

test: | $(VENV)
	$(PY) -m pytest -q tests

# a private single-node SLURM on this machine runs `make smoke` as the README's cluster recipe (tests/slurm.sh)
test-slurm: | $(VENV)
	bash tests/slurm.sh

bench: | $(VENV)
	$(PY) bench.py --out runs/bench.json

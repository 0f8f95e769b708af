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
SHELL := bash
.SHELLFLAGS := -eo pipefail -c

# ---- the grid ----------------------------------------------------------------------------------------------
# how the CIFAR-100 source is trained
SRC      ?= nat fgsm pgd
# how the transfer trains on CIFAR-10
TGT      ?= nat fgsm pgd
# the three strategies; any depth of common.DEPTHS (bK, the last K of ResNet56's 27 residual blocks and the head;
# README: the table of depths) or named strategy of common.STRATEGIES may join them
UNFREEZE ?= 1 12 56
# the depths `make depth` sweeps for each source x target (one cohort), head only to everything
DEPTHS   ?= 1 b1 b3 b6 12 b14 b18 56
# CIFAR-10 baselines without transfer
BASE     ?= nat fgsm pgd
# several seeds: the report shows mean ± std and n
SEEDS    ?= 0
# one black-box DenseNet121 serves every seed
BB_SEED  ?= 0

# ---- settings (defaults: the paper's protocol, PROTOCOL.md) -------------------------------------------------
# everything this pipeline writes; make smoke and make mini write their own trees
RUN       ?= runs/paper
SMOKE_RUN ?= runs/smoke
MINI_RUN  ?= runs/mini
# torchvision root (downloads), a folder of *_{train,test}.npz, or 'synthetic'
DATA      ?= data
ARCH      ?= resnet56
EPOCHS_SRC ?= 200
EPOCHS_TL  ?= 50
EPOCHS_BB  ?= 200
# extra flags for every training, e.g. --batch-size 128 --device cuda
TRAIN_FLAGS ?=
# extra flags for one stage's trainings only: the CIFAR-100 sources, the CIFAR-10 baselines, the transfers; e.g. an
# eps-4 PGD-10 source variant in one call: make SRC=pgd SRC_FLAGS='--eps 4 --steps 10' RUN=runs/eps4 all
SRC_FLAGS   ?=
BASE_FLAGS  ?=
TL_FLAGS    ?=
# extra flags for the DenseNet121, e.g. --growth 32
BB_FLAGS    ?=
# extra flags for every evaluation, e.g. --no-strong --limit 1000
EVAL_FLAGS  ?=
# prefix of every job: $(GPULOCK) on a multi-GPU box, or srun --gres=gpu:1 ...
LAUNCH      ?=
# CUDA graphs for every job's steps: auto (captured where they can be, a failure goes on eagerly), on, off (eager)
CAPTURE     ?= auto
$(if $(filter-out auto on off,$(CAPTURE)),$(error CAPTURE must be auto, on or off, got '$(CAPTURE)'))

# Python: a .venv built from requirements.txt on first use; PY=python3 uses an existing environment instead.
PY ?= .venv/bin/python
VENV := $(if $(filter .venv/bin/python,$(PY)),.venv/installed)

# `make -j N LAUNCH='$(GPULOCK)'`: each job takes a free GPU (SLOTS jobs per GPU) through flock and waits for
# one when all are busy. Several PGD trainings of a small ResNet56 can share one large GPU: SLOTS=2 or 3.
NGPU  ?= $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
SLOTS ?= 1
GPULOCK = bash -c '[ "$(NGPU)" -gt 0 ] 2>/dev/null || { echo "error: GPULOCK: no GPU to take (NGPU=$(NGPU)); run \
  without LAUNCH on a CPU, or set NGPU to the number of GPUs" >&2; exit 2; }; \
  while :; do for g in $$(seq 0 $$(($(NGPU) - 1))); do for s in $$(seq $(SLOTS)); do \
  exec 9>"$${TMPDIR:-/tmp}/gpulock.$$g.$$s"; if flock -n 9; then export CUDA_VISIBLE_DEVICES=$$g; exec "$$@"; fi; \
  done; done; sleep 10; done' gpulock

# ---- checks: a bad variable stops make before the first job, with one line naming it ------------------------
# The allowed names are common.py's tables' (training objectives, depths, named strategies): `python common.py`
# prints them. Asked only for goals that run jobs here (`make help` stays instant; smoke and test ask in their
# sub-makes); an interpreter that cannot answer (no .venv yet) leaves a bad name to the scripts' own argparse.
NO_PY_GOALS := help clean-smoke status $(VENV)
NOT_PIPELINE := $(NO_PY_GOALS) smoke mini test test-slurm gpu-check bench
GOALS := $(or $(MAKECMDGOALS),help)
NAMES   := $(if $(filter-out $(filter-out mini,$(NOT_PIPELINE)),$(GOALS)),$(shell $(PY) common.py 2>/dev/null))
names_of = $(patsubst $(1):%,%,$(filter $(1):%,$(NAMES)))
ADV_OK      := $(call names_of,adv)
UNFREEZE_OK := $(call names_of,depth) $(call names_of,strategy)
ARCH_OK     := $(addprefix resnet,$(shell seq 8 6 1202))
, := ,
not_int = $(strip $(foreach w,$(1),$(if $(subst 0,,$(subst 1,,$(subst 2,,$(subst 3,,$(subst 4,,$(subst 5,,$(subst \
  6,,$(subst 7,,$(subst 8,,$(subst 9,,$(w))))))))))),$(w))))
not_one_int = $(or $(call not_int,$(1)),$(filter-out 1,$(words $(1))))
bad = $(error $(1))
$(if $(NAMES),$(foreach v,SRC TGT BASE,$(if $(filter-out $(ADV_OK),$($(v))),$(call bad,$(v)=$($(v)): each must \
  be one of $(ADV_OK) (common.OBJECTIVES)))))
$(if $(NAMES),$(foreach v,UNFREEZE DEPTHS,$(if $(filter-out $(if $(filter DEPTHS,$(v)),$(call names_of,depth),\
  $(UNFREEZE_OK)),$($(v))),$(call bad,$(v)=$($(v)): each must be one of $(if $(filter DEPTHS,$(v)),$(call \
  names_of,depth),$(UNFREEZE_OK)) (transfer.py --unfreeze; README$(,) "Where robustness lives")))))
$(if $(or $(call not_int,$(SEEDS)),$(if $(SEEDS),,empty)),$(call bad,SEEDS=$(SEEDS): one or more non-negative \
  integers$(,) e.g. SEEDS="0 1 2"))
$(foreach v,SRC TGT UNFREEZE DEPTHS BASE SEEDS,$(if $(filter-out $(words $($(v))),$(words $(sort $($(v))))),$(call \
  bad,$(v)=$($(v)) names a value twice)))
$(if $(call not_one_int,$(BB_SEED)),$(call bad,BB_SEED=$(BB_SEED): one non-negative integer))
$(foreach v,EPOCHS_SRC EPOCHS_TL EPOCHS_BB,$(if $(or $(call not_one_int,$($(v))),$(filter 0,$($(v)))),$(call \
  bad,$(v)=$($(v)): one integer above 0$(,) e.g. $(v)=10)))
$(if $(filter-out $(ARCH_OK),$(ARCH)),$(call bad,ARCH=$(ARCH): the sources' ResNet: resnet56 (the paper) or \
  resnetN with N = 6n+2 (resnet8$(,) resnet20$(,) ...)))
$(foreach v,RUN DATA PY SMOKE_RUN MINI_RUN,$(if $(filter-out 1,$(words $($(v)))),$(call bad,$(v)='$($(v))': \
  a path with spaces (or an empty one) is not supported; use one without (a symbolic link will do))))
# a folder of .npz files must hold all four (a torchvision root, with none, downloads what it lacks)
NPZ := $(foreach d,cifar10 cifar100,$(foreach s,train test,$(DATA)/$(d)_$(s).npz))
$(if $(and $(wildcard $(DATA)/*.npz),$(filter-out $(wildcard $(NPZ)),$(NPZ))),$(call bad,DATA=$(DATA) lacks \
  $(notdir $(filter-out $(wildcard $(NPZ)),$(NPZ))): a folder of .npz files needs cifar10_train/test.npz and \
  cifar100_train/test.npz))

# no GPU, no wait: GPULOCK and gpu-check need one (nvidia-smi lists none: NGPU is 0)
$(if $(findstring GPULOCK,$(value LAUNCH)),$(if $(or $(call not_one_int,$(NGPU)),$(filter 0,$(NGPU))),$(call \
  bad,LAUNCH uses GPULOCK but NGPU=$(NGPU): no GPU to take (nvidia-smi lists none); leave LAUNCH empty to run \
  the jobs here$(,) or set NGPU to the number of GPUs)))
$(if $(or $(call not_one_int,$(SLOTS)),$(filter 0,$(SLOTS))),$(call bad,SLOTS=$(SLOTS): one integer above 0))
$(if $(filter gpu-check,$(MAKECMDGOALS)),$(if $(filter-out 0,$(NGPU)),,$(call bad,make gpu-check checks the \
  CUDA path and this machine has no GPU (nvidia-smi lists none; NGPU=$(NGPU)); on a CPU$(,) make smoke and make \
  test check the rest)))

R := $(RUN)
# the data and the capture switch, passed to every training, evaluation and crafting job
DATAFLAG = --data-dir $(DATA) --capture $(CAPTURE)
# and the ResNet and seeds of every training but the DenseNet's (+ TRAIN_FLAGS: TRAIN)
TRAIN_BASE = --arch $(ARCH) --seed $(SEEDS) $(DATAFLAG)
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
# Named here so that none is an intermediate file: Make rebuilds any of them that is deleted, even when the report
# that depends on it is newer (and never deletes one after a later stage fails).
$(MODELS) $(EXAMPLES):

# ---- every stage's command, checked by its own script before the first job ---------------------------------
# check.py runs, in one process, each stage's command as its recipe will with --check (every flag parsed, depths
# against ARCH's blocks, devices; nothing read or written) and stops make with one line naming the variable. It
# runs once, when make reads this file, for any goal that runs the pipeline; smoke, mini, test, gpu-check and bench
# only check that PY can run the scripts (their own makes check their commands). With the default PY before .venv
# is built, it runs as the first job instead (after the build). CHECKED=1 skips it (the depth sweep's own make: its
# caller checked).
CHECK_TL = --epochs $(EPOCHS_TL) $(TRAIN_BASE) --init '$(R)/source/cifar100_{src}_s{seed}.pt' \
  --out '$(R)/transfer/{src}-{tgt}-{unfreeze}_s{seed}.pt' ::TRAIN_FLAGS $(TRAIN_FLAGS) ::TL_FLAGS $(TL_FLAGS)
CHECK_JOBS = \
  '::ARCH=$(ARCH), SEEDS=$(SEEDS)' train_source.py --dataset cifar100 --epochs $(EPOCHS_SRC) $(TRAIN_BASE) \
    --out '$(R)/source/cifar100_nat_s{seed}.pt' ::TRAIN_FLAGS $(TRAIN_FLAGS) ::SRC_FLAGS $(SRC_FLAGS) \
  '::ARCH=$(ARCH), SEEDS=$(SEEDS)' train_source.py --dataset cifar10 --epochs $(EPOCHS_SRC) $(TRAIN_BASE) \
    --out '$(R)/baseline/cifar10_nat_s{seed}.pt' ::TRAIN_FLAGS $(TRAIN_FLAGS) ::BASE_FLAGS $(BASE_FLAGS) \
  $(if $(SRC),$(if $(TGT),"::UNFREEZE='$(UNFREEZE)' (ARCH=$(ARCH))" transfer.py --src $(firstword $(SRC)) \
    --tgt $(firstword $(TGT)) --unfreeze $(UNFREEZE) $(CHECK_TL) \
    $(if $(filter depth,$(GOALS)),"::DEPTHS='$(DEPTHS)' (ARCH=$(ARCH))" transfer.py --src $(firstword $(SRC)) \
    --tgt $(firstword $(TGT)) --unfreeze $(DEPTHS) $(CHECK_TL)))) \
  '::BB_SEED=$(BB_SEED)' train_blackbox.py --seed $(BB_SEED) --epochs $(EPOCHS_BB) $(DATAFLAG) \
    --out $(BLACKBOX) ::TRAIN_FLAGS $(TRAIN_FLAGS) ::BB_FLAGS $(BB_FLAGS) \
  '::DATA=$(DATA)' evaluate.py --craft-from $(BLACKBOX) --out $(EXAMPLES) $(DATAFLAG) ::EVAL_FLAGS $(EVAL_FLAGS) \
  '::DATA=$(DATA)' evaluate.py --ckpt x.pt --blackbox $(EXAMPLES) --out x.eval.json $(DATAFLAG) \
    ::EVAL_FLAGS $(EVAL_FLAGS)
# LAUNCH=srun ...: the jobs' devices are on other machines, not checked here
CHECK = $(PY) check.py --py $(PY) $(if $(LAUNCH),$(if $(findstring GPULOCK,$(value LAUNCH)),,--elsewhere)) \
  $(if $(filter-out $(NOT_PIPELINE),$(GOALS)),$(CHECK_JOBS))
ifeq ($(CHECKED),)
ifneq ($(filter-out $(NO_PY_GOALS),$(GOALS)),)
ifeq ($(VENV),$(wildcard $(VENV)))
  CHECK_SAYS := $(shell $(CHECK) 2>&1)
  $(if $(filter-out 0,$(.SHELLSTATUS)),$(error $(CHECK_SAYS)))
else
  CHECK_FIRST := check
endif
endif
endif
# `make check VAR=...`: the check alone (when make read this file), nothing run
.PHONY: check
check: | $(VENV)
	@$(if $(CHECK_FIRST),$(CHECK) && )echo "every stage's command passes its script's check"

.PHONY: help all sources baselines transfers blackbox evals report smoke mini test test-slurm gpu-check bench clean-smoke
help:
	@echo "make smoke      the whole pipeline on built-in synthetic data, CPU, a few minutes -> runs/smoke/report"
	@echo "make test       the tests (includes make smoke)"
	@echo "make all        the paper on a GPU: 3 sources, 3 baselines, 27 transfers, DenseNet121, evaluations, report"
	@echo "make mini DATA=FOLDER   the whole grid on small real subsets (npz), scaled down, on a GPU -> runs/mini"
	@echo "make depth SRC=pgd TGT=nat   robustness against unfreezing depth (DEPTHS), one cohort -> $(R)/depth/pgd-nat"
	@echo "make bench      training/evaluation throughput: eager, captured, cohorts, a plain PyTorch reference"
	@echo "make test-slurm make smoke through a private single-node SLURM (installs slurm-wlm and munge)"
	@echo "make gpu-check  on a CUDA machine, first: GPU tests, a short bench, bf16 vs fp32 attacks; one summary"
	@echo "make status     what RUN holds: built, missing, running (pid, epoch), the share done; starts nothing"
	@echo "make check      every stage's command checked by its script (flags, depths against ARCH); runs nothing"
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
TRAIN = $(TRAIN_BASE) $(TRAIN_FLAGS)

$(call seeds_of,$(R)/source/cifar100_%): | train_source.py common.py engine.py $(VENV) $(CHECK_FIRST)
	$(LAUNCH) $(PY) train_source.py --dataset cifar100 --adv $* --epochs $(EPOCHS_SRC) $(TRAIN) $(SRC_FLAGS) \
	  --out '$(R)/source/cifar100_$*_s{seed}.pt'

$(call seeds_of,$(R)/baseline/cifar10_%): | train_source.py common.py engine.py $(VENV) $(CHECK_FIRST)
	$(LAUNCH) $(PY) train_source.py --dataset cifar10 --adv $* --epochs $(EPOCHS_SRC) $(TRAIN) $(BASE_FLAGS) \
	  --out '$(R)/baseline/cifar10_$*_s{seed}.pt'

# The stem is source-target, e.g. pgd-fgsm; each cohort needs its own source, one per seed.
.SECONDEXPANSION:
$(foreach u,$(UNFREEZE),$(call seeds_of,$(R)/transfer/%-$(u))): \
  $$(call seeds_of,$(R)/source/cifar100_$$(call src_of,$$*)) | transfer.py common.py engine.py $(VENV) $(CHECK_FIRST)
	$(LAUNCH) $(PY) transfer.py --src $(call src_of,$*) --tgt $(call tgt_of,$*) --unfreeze $(UNFREEZE) \
	  --epochs $(EPOCHS_TL) $(TRAIN) $(TL_FLAGS) --init '$(R)/source/cifar100_{src}_s{seed}.pt' \
	  --out '$(R)/transfer/{src}-{tgt}-{unfreeze}_s{seed}.pt'

$(R)/blackbox/densenet121_s%.pt: | train_blackbox.py common.py engine.py $(VENV) $(CHECK_FIRST)
	$(LAUNCH) $(PY) train_blackbox.py --seed $* --epochs $(EPOCHS_BB) $(DATAFLAG) $(TRAIN_FLAGS) $(BB_FLAGS) --out $@

# ---- evaluation --------------------------------------------------------------------------------------------
# The black-box examples are crafted once on the DenseNet121 and reused by every CIFAR-10 evaluation.
$(EXAMPLES): $(BLACKBOX) | evaluate.py common.py engine.py $(CHECK_FIRST)
	$(LAUNCH) $(PY) evaluate.py --craft-from $< --out $@ $(DATAFLAG) $(EVAL_FLAGS) --force $(LOG)

# CIFAR-100 sources: white-box columns on the CIFAR-100 test set. The DenseNet: its clean and white-box accuracy.
$(R)/source/%.eval.json: $(R)/source/%.pt | evaluate.py common.py engine.py $(CHECK_FIRST)
	$(LAUNCH) $(PY) evaluate.py --ckpt $< --out $@ $(DATAFLAG) $(EVAL_FLAGS) --force $(LOG)

$(R)/blackbox/%.eval.json: $(R)/blackbox/%.pt | evaluate.py common.py engine.py $(CHECK_FIRST)
	$(LAUNCH) $(PY) evaluate.py --ckpt $< --out $@ $(DATAFLAG) $(EVAL_FLAGS) --no-strong --no-curve --force $(LOG)

%.eval.json: %.pt $(EXAMPLES) | evaluate.py common.py engine.py $(CHECK_FIRST)
	$(LAUNCH) $(PY) evaluate.py --ckpt $< --blackbox $(EXAMPLES) --out $@ $(DATAFLAG) $(EVAL_FLAGS) --force $(LOG)

$(R)/report/report.md: $(EVALS) | report.py $(CHECK_FIRST)
	$(PY) report.py --run $(R) --out $(R)/report

# ---- depth sweep -------------------------------------------------------------------------------------------
# Where robustness lives: each source x target transferred at every depth of DEPTHS, trained as one cohort by the
# transfer rule above (a sub-make with UNFREEZE = DEPTHS; 1, 12, 56 are the grid's own models, reused when built),
# evaluated as every model, then depth.png and depth.md in $(R)/depth/SRC-TGT/ (e.g. depth/pgd-nat; several
# values joined by _), so that another pair never replaces them. The report runs every time: it is cheap and shows
# exactly the depths asked for.
space := $() $()
DEPTH_OUT = $(R)/depth/$(subst $(space),_,$(strip $(SRC)))-$(subst $(space),_,$(strip $(TGT)))
.PHONY: depth
depth: | $(VENV) $(CHECK_FIRST)
	$(MAKE) --no-print-directory UNFREEZE='$(DEPTHS)' CHECKED=1 evals
	$(PY) report.py --depth --run $(R) --src $(SRC) --tgt $(TGT) --unfreeze $(DEPTHS) --out $(DEPTH_OUT)

# ---- what a RUN holds -------------------------------------------------------------------------------------
# `make status` (with the variables of the make that builds the RUN): built, missing and running per stage, the
# share done; it starts nothing. status.py needs no torch: PY, or python3 before .venv is built.
commas = $(subst $(space),$(,),$(strip $(1)))
STATUS_JOBS = $(foreach a,$(SRC),sources:$(call commas,$(call seeds_of,$(R)/source/cifar100_$(a)))) \
  $(foreach a,$(BASE),baselines:$(call commas,$(call seeds_of,$(R)/baseline/cifar10_$(a)))) \
  $(foreach s,$(SRC),$(foreach t,$(TGT),transfers:$(call commas,$(foreach u,$(UNFREEZE),$(call \
    seeds_of,$(R)/transfer/$(s)-$(t)-$(u)))))) \
  blackbox:$(BLACKBOX) blackbox:$(EXAMPLES) $(addprefix evals:,$(EVALS)) report:$(R)/report/report.md
.PHONY: status
status:
	@$(if $(wildcard $(PY)),$(PY),python3) status.py --run $(R) $(STATUS_JOBS)

# ---- smoke, tests, benchmark -------------------------------------------------------------------------------
# The same DAG on built-in synthetic data with tiny settings, in its own output tree, on CPU. Tuned so that no model
# is a constant-class predictor (evaluate.py flags one, and a flagged row decides no claim) and no CIFAR-100 source
# is at chance (its transfers would start from nothing): batch 25 and 2 epochs; 400 images (32 steps) for the
# CIFAR-10 models, 2,000 for the sources (152 steps; 400 images are 4 per class of 100, and a source trained on them
# stays at chance); adversarial training at eps 2/256 with PGD-3 (evaluation stays at eps 8, PGD-7), since a PGD
# source at eps 8 learns near-constant features whose transfers predict one class; a growth-4 DenseNet121 learns
# in the time a growth-12 one stayed at chance.
SMOKE = RUN=$(SMOKE_RUN) DATA=synthetic ARCH=resnet8 EPOCHS_SRC=2 EPOCHS_TL=2 EPOCHS_BB=2 SEEDS=0 \
  SRC='nat fgsm pgd' TGT='nat fgsm pgd' UNFREEZE='1 12 56' BASE='nat fgsm pgd' LAUNCH='$(SMOKE_LAUNCH)' \
  TRAIN_FLAGS='--limit 400 --batch-size 25 --eps 2 --steps 3 --device cpu' SRC_FLAGS='--limit 2000' \
  BB_FLAGS='--growth 4 --limit 400' \
  EVAL_FLAGS='--limit 50 --strong-steps 5 --restarts 2 --curve-eps 0 8 32 --device cpu'
# the smoke's job prefix (empty: local); test-slurm sets it to an srun job step
SMOKE_LAUNCH ?=
# One thread per job and one job per core: small models gain nothing from intra-op threads.
# (nproc obeys OMP_NUM_THREADS, which a user may have set to 1 for other reasons: not here)
NPROC := $(shell env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 2)
# then a 3-depth sweep of pgd -> nat (1 and 56 are the grid's: one more model trains), after the grid, as its own step
SMOKE_DEPTH = SRC=pgd TGT=nat DEPTHS='1 b2 56'
smoke: | $(VENV)
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory -j$(NPROC) $(SMOKE) all
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory -j$(NPROC) $(SMOKE) $(SMOKE_DEPTH) depth
	@echo "smoke report: $(SMOKE_RUN)/report/report.md; depth sweep: $(SMOKE_RUN)/depth/pgd-nat/depth.md"

# The whole grid on real images at a small scale: a folder of cifar10/cifar100_{train,test}.npz (e.g. 8,000 + 1,000
# images each), the protocol's schedule shape at 10/4/6 epochs, every test image of the folder, a lighter strong
# attack. Meant for one GPU, through the captured cohort path; the first real-data result to look at.
MINI_JOBS ?= 4
MINI = RUN=$(MINI_RUN) EPOCHS_SRC=10 EPOCHS_TL=4 EPOCHS_BB=6 SEEDS=0 \
  EVAL_FLAGS='--strong-steps 20 --restarts 3 --curve-eps 0 2 4 8 16 32'
mini: | $(VENV)
	@ls $(NPZ) >/dev/null 2>&1 || { \
	  echo "error: make mini needs DATA=FOLDER holding cifar10_{train,test}.npz and cifar100_{train,test}.npz"; exit 2; }
	$(MAKE) --no-print-directory -j$(MINI_JOBS) $(MINI) all
	@echo "mini report: $(MINI_RUN)/report/report.md"

# On a CUDA machine, before anything else (README, "GPU"): the GPU tests, a short benchmark, a PGD-trained ResNet56
# evaluated with bf16 and with fp32 attacks, a DenseNet121 evaluation, then one summary block. Sized for 5 minutes on
# one H100/H200 from the rates measured there (BENCHMARKS.md); the summary gives each part's time. Synthetic data
# unless DATA=FOLDER is given on the command line. `make mini` is its own command.
CHECK_RUN  ?= runs/gpu-check
CHECK_DATA  = --data-dir $(if $(filter command line,$(origin DATA)),$(DATA),synthetic) --capture $(CAPTURE) --force
CHECK_EVAL  = $(CHECK_DATA) --limit 1000 --strong-steps 20 --restarts 2
gpu-check: | $(VENV)
	@mkdir -p $(CHECK_RUN) && date +%s > $(CHECK_RUN)/start
	-$(PY) -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee $(CHECK_RUN)/tests.log
	$(PY) bench.py --no-densenet --cohorts 3 --repeats 3 --iters 4 --out $(CHECK_RUN)/bench.json
	$(PY) train_source.py --dataset cifar10 --adv pgd --epochs 2 --limit 2000 $(CHECK_DATA) --out $(CHECK_RUN)/resnet56.pt
	$(PY) train_blackbox.py --epochs 1 --limit 500 $(CHECK_DATA) --out $(CHECK_RUN)/densenet121.pt
	$(PY) evaluate.py --ckpt $(CHECK_RUN)/resnet56.pt $(CHECK_EVAL) --out $(CHECK_RUN)/resnet56-bf16.eval.json
	$(PY) evaluate.py --ckpt $(CHECK_RUN)/resnet56.pt $(CHECK_EVAL) --precision fp32 --out $(CHECK_RUN)/resnet56-fp32.eval.json
	$(PY) evaluate.py --ckpt $(CHECK_RUN)/densenet121.pt $(CHECK_EVAL) --no-strong --no-curve \
	  --out $(CHECK_RUN)/densenet121.eval.json
	$(PY) bench.py --summary $(CHECK_RUN)

clean-smoke:
	rm -rf $(SMOKE_RUN)

# pytest-xdist (in requirements.txt) spreads the tests over every core; without it they run one after another.
test: | $(VENV)
	$(PY) -m pytest -q tests $$($(PY) -c 'import xdist' 2>/dev/null && echo --numprocesses=$(NPROC) --dist=worksteal)

# a private single-node SLURM on this machine runs `make smoke` as the README's cluster recipe (tests/slurm.sh)
test-slurm: | $(VENV)
	bash tests/slurm.sh

bench: | $(VENV)
	$(PY) bench.py --out runs/bench.json

# Developer entry points. Benchmarks: see benchmarks/conftest.py; modes in gshead/benchmarking.py.
#
#   make test          the unit suite (what CI runs, see .ci/run)
#   make bench-quick   the benchmark suite in quick mode (small sizes, ratios only; what CI runs)
#   make bench         full mode: the issues' sizes and targets; saves the run and compares it with
#                      the latest baseline (make bench-save), else the latest saved run, failing on a
#                      median more than 10% slower
#   make bench-save    full mode, saved as the baseline that make bench compares with
#
# Results live under $(BENCH_STORAGE)/<machine>/NNNN_*.json (git-ignored). On a shared machine the
# medians move by 20-30% between runs: compare on a quiet machine.

PYTHON ?= python
PYTEST = $(PYTHON) -m pytest
BENCH_STORAGE ?= .benchmarks/full
BENCH_ARGS ?=
BENCH = GSHEAD_BENCH=full $(PYTEST) benchmarks -q --benchmark-enable --benchmark-storage=file://$(BENCH_STORAGE) $(BENCH_ARGS)

# The newest explicit baseline, else the newest saved run (both may be empty).
BASELINE = $(lastword $(sort $(wildcard $(BENCH_STORAGE)/*/*_baseline.json)))
LAST_RUN = $(wildcard $(BENCH_STORAGE)/*/[0-9][0-9][0-9][0-9]_*.json)
COMPARE = $(if $(BASELINE),--benchmark-compare=$(BASELINE),$(if $(LAST_RUN),--benchmark-compare))

.PHONY: test bench bench-quick bench-save

test:
	$(PYTEST) -q

bench:
	$(BENCH) --benchmark-autosave $(if $(COMPARE),$(COMPARE) --benchmark-compare-fail=median:10%)

bench-quick:
	GSHEAD_BENCH=quick $(PYTEST) benchmarks -q --benchmark-enable $(BENCH_ARGS)

bench-save:
	$(BENCH) --benchmark-save=baseline

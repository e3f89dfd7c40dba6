# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-speed bench-quality clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so that no dependency pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/learner demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check learner tests benchmarks
	$(VENV)/bin/ruff format --check learner tests benchmarks
	$(VENV)/bin/mypy learner

# Quality benchmarks of BENCHMARKS.md (## Quality): the objective-defaults sweep, then one
# run per data set; finished cells are cached, so an interrupted run continues.
QUALITY_DATASETS ?= parkinsons synth-lus synth-lus-null synth-mri synth-mri-slices covid-blues-severity covid-blues-sf oasis2-slices
bench-quality: $(STAMP)
	$(PY) benchmarks/quality.py --sweep
	$(PY) benchmarks/quality.py --layouts --seeds 0 1 2 3 4
	for d in $(QUALITY_DATASETS); do $(PY) benchmarks/quality.py --dataset $$d || exit 1; done

# Speed benchmarks of BENCHMARKS.md (## Speed): writes benchmarks/results/speed.json.
bench-speed: $(STAMP)
	$(PY) benchmarks/speed.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache

# Two commands do all the set-up on a fresh machine: `make demo` and `make test`. They install
# the exact versions of constraints.txt (pyproject.toml states the ranges the code accepts).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-speed bench-quality constraints clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, at its constrained version, so that no dependency pulls a CUDA build.
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/learner demo --out demo-output

test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || echo "note: chromium is not installed, so the browser test of report.html will skip (Debian: apt-get install chromium)"
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check learner tests benchmarks conftest.py docs/hooks.py
	$(VENV)/bin/ruff format --check learner tests benchmarks conftest.py docs/hooks.py
	$(VENV)/bin/mypy learner

# Quality benchmarks (BENCHMARKS.md, reports in benchmarks/reports/): the objective-defaults
# sweep, then one run per data set; finished cells are cached, so an interrupted run continues.
QUALITY_DATASETS ?= parkinsons synth-lus synth-lus-null synth-mri synth-mri-slices covid-blues-severity covid-blues-sf oasis2-slices
bench-quality: $(STAMP)
	$(PY) benchmarks/quality.py --sweep
	$(PY) benchmarks/quality.py --layouts --seeds 0 1 2 3 4
	for d in $(QUALITY_DATASETS); do $(PY) benchmarks/quality.py --dataset $$d || exit 1; done

# Speed benchmarks (benchmarks/reports/speed.md): writes benchmarks/results/speed.json.
bench-speed: $(STAMP)
	$(PY) benchmarks/speed.py

# Rewrites the versions in constraints.txt (its header kept) from what .venv holds now: after
# upgrading a package there on purpose; then `make test`. Not a prerequisite of the stamp, so
# that an older constraints.txt is never installed over the upgrade first.
constraints:
	test -x $(PY)
	{ sed -n '/^#/!q;p' constraints.txt; \
	  $(PY) -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache

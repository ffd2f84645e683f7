# `make test` is the one test command: the README shows it and .ci/run calls it.
PYTHON ?= python3
PYTEST = $(PYTHON) -m pytest -q -n 2

.PHONY: install-test test test-fast bench-quick
install-test:
	$(PYTHON) -m pip install -e ".[all,test]"

# The whole suite (every test, full-size checks included).
test: install-test
	$(PYTEST) --durations=25

# The fast tier: everything but the full-size and slow tests.
test-fast: install-test
	$(PYTEST) -m "not fullsize and not slow"

# The benchmark command in quick mode (output under benchmarks/results/*_quick.json and results/quick/):
# CI runs it once after the tests to prove it works; its numbers are not checked.
bench-quick: install-test
	$(PYTHON) -m benchmarks --quick

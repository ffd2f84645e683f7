# `make test` is the one test command: the README shows it and .ci/run calls it.
PYTHON ?= python3

.PHONY: install-test test bench-quick
install-test:
	$(PYTHON) -m pip install -e ".[all,test]"

test: install-test
	$(PYTHON) -m pytest -q -n 2 --durations=25

# The benchmark command in quick mode (output under benchmarks/results/*_quick.json and results/quick/):
# CI runs it once after the tests to prove it works; its numbers are not checked.
bench-quick: install-test
	$(PYTHON) -m benchmarks --quick

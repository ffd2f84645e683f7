# `make test` is the one test command: the README shows it and .ci/run calls it.
PYTHON ?= python3

.PHONY: install-test test
install-test:
	$(PYTHON) -m pip install -e ".[all,test]"

test: install-test
	$(PYTHON) -m pytest -q -n 2 --durations=25

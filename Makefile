# Two entry points for a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.PHONY: demo test lint bench venv

venv:
	@scripts/bootstrap.sh >/dev/null

demo:
	@V=$$(scripts/bootstrap.sh) && $$V/bin/segnext-geo demo --out-dir demo --overwrite

test:
	@V=$$(scripts/bootstrap.sh) && $$V/bin/ruff check . && $$V/bin/ruff format --check . && $$V/bin/mypy && \
	  { $$V/bin/python -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc; }

lint:
	@V=$$(scripts/bootstrap.sh) && $$V/bin/ruff check --fix . && $$V/bin/ruff format .

bench:
	@V=$$(scripts/bootstrap.sh) && for b in benchmarks/*.py; do echo "== $$b"; $$V/bin/python $$b; done

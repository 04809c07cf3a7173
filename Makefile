# Two commands set everything up on a fresh machine: `make demo` and `make test`.
.PHONY: demo test test-all bench venv class-proof

demo:
	@scripts/setup-venv.sh train,eval,demo
	.venv/bin/tamer demo $(ARGS)

test:
	@scripts/setup-venv.sh train,eval,test,app
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q $(ARGS)

# Including the slow end-to-end runs.
test-all:
	@scripts/setup-venv.sh train,eval,test,app
	.venv/bin/python -m pytest -q -m "slow or not slow" $(ARGS)

bench:
	@scripts/setup-venv.sh train,eval,test,app
	.venv/bin/python bench/bench_vqgan.py $(ARGS)

# The class-conditional proof on the built-in data: about an hour on 2 CPU cores (scripts/class-proof.sh).
class-proof:
	@scripts/setup-venv.sh train,eval
	scripts/class-proof.sh $(ARGS)

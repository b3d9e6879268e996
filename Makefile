# Convenience targets; the README's two commands are ./dev/run and ./dev/test.
.PHONY: run test lint

run:
	./dev/run

test:
	./dev/test

lint:
	./dev/lint

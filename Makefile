# Everything a fresh Debian 12 machine needs: `make demo`, `make test`, `make bench`.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the demo, the tests and the benchmarks run for real.
APT_PACKAGES := serf haproxy nginx supervisor wrk hyperfine ruby socat docker.io docker-compose debootstrap bc chromium iproute2 iptables prometheus

.PHONY: all deps venv test unit demo bench bench-docker screenshot clean

all: test

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml serf_handlers/serf-handle
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Unit tests on 4 workers (they mostly wait on subprocesses); the integration and Docker tests
# one at a time, as they judge real processes' timing.
test: deps venv
	$(PY) -m mypy
	$(PY) -m ruff check .
	$(PY) -m pytest -ra -n 4 -m 'not integration and not docker'
	$(PY) -m pytest -ra --durations=15 -m 'integration or docker'

unit: venv
	$(PY) -m pytest -ra -n 4 -m 'not integration and not docker'

demo: deps venv
	$(PY) -m demo

bench: deps venv
	$(PY) -m bench

# docs/stats.png (shown in the README): HAProxy's stats page of a real load balancer on
# loopback, three web nodes, one stopped, taken by headless Chromium.
screenshot: deps venv
	$(PY) -m support.stats docs/stats.png

bench-docker: deps
	bench/assets/docker_images.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache

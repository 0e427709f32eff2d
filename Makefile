# hutch: `make up` runs hutch on this machine with a first workload; `make test` runs the suite.
# Both install what is missing on a fresh Debian 12 machine first (apt packages, .venv).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
HUTCH := $(VENV)/bin/hutch
CACHE_DIR ?= /var/cache/hutch
BUSYBOX_ROOT := $(CACHE_DIR)/busybox-rootfs
# The guest kernel's package: `hutch setup` downloads and unpacks it, never installs it.
KERNEL_PACKAGE := linux-image-cloud-amd64
# npm (`hutch setup` fetches the dashboard's front-end packages with it) is Debian's unless the
# host has one already (Node.js's own packages carry theirs and conflict with Debian's).
# Runtime: qemu, crun, nftables (the node's filtering and NAT, driven through `nft -j`), guest build (gcc, kmod, lz4, busybox), root disks (erofs-utils, e2fsprogs), volumes (xfsprogs: a reflink pool where the state dir has none);
# tests and benchmarks: a local registry (docker-registry), skopeo and umoci to compare against,
# PostgreSQL (the tests start their own throwaway clusters), libsqlite3-dev (its libsqlite3.a: a
# static SQLite workload on a volume in the guest), chromium and chromium-driver (the dashboard's
# browser tests, driven headless through selenium).
APT_PACKAGES := qemu-system-x86 qemu-utils crun busybox-static erofs-utils e2fsprogs xfsprogs kmod lz4 zstd \
	gcc libc6-dev python3 python3-venv python3-dev iproute2 nftables util-linux cpio ca-certificates \
	docker-registry skopeo umoci postgresql-15 wrk libsqlite3-dev chromium chromium-driver
PYTEST_ARGS ?=
PORT ?= 7878

.PHONY: help setup apt venv guest up down test lint fmt openapi bench screenshots clean

help:
	@echo "make up     install what is missing, set up hutch, run a first workload in a micro-VM"
	@echo "make test   install what is missing, lint, run the test suite"
	@echo "make bench  run the benchmarks under bench/"
	@echo "make down   stop what make up started"
	@echo "make lint   ruff, mypy, import-linter"
	@echo "make openapi  regenerate docs/openapi.json from the app"
	@echo "make screenshots  keep the dashboard's screenshots of the last test run in docs/"

setup: apt venv guest

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi; \
	apt-cache show --no-all-versions $(KERNEL_PACKAGE) >/dev/null 2>&1 || apt-get update -qq

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Guest kernel (from Debian's package), agent and initramfs, cached by content; KVM/TCG probe.
guest: venv
	HUTCH_CACHE_DIR=$(CACHE_DIR) $(HUTCH) setup

$(BUSYBOX_ROOT)/bin/busybox: | venv
	$(PY) -m hutch.images.busybox $(BUSYBOX_ROOT)

# `hutch up -d`: controller + node agent on this machine (state in /var/lib/hutch), then the
# busybox image set-up built, public to every project, and a first machine from it.
up: setup $(BUSYBOX_ROOT)/bin/busybox
	HUTCH_CACHE_DIR=$(CACHE_DIR) $(HUTCH) up -d --port $(PORT)
	$(HUTCH) image import $(BUSYBOX_ROOT) --name busybox:latest --public
	@echo "== a first workload, in its own micro-VM:"
	$(HUTCH) run --rm busybox -- /bin/sh -c \
		'echo "hello from a hutch micro-VM: kernel $$(uname -r), $$(nproc) vCPU"'
	@echo "== hutch runs on this machine:"
	@echo "   API       http://127.0.0.1:$(PORT)/v1  (OpenAPI: /openapi.json, docs/api.md)"
	@echo "   dashboard http://127.0.0.1:$(PORT)/ui  (sign in with the token below; docs/dashboard.md)"
	@echo "   token     $$($(PY) -c 'from hutch import config; print(config.load().state_dir)')/admin-token (system admin)"
	@echo "   CLI       $(HUTCH) run -d --name web busybox -- httpd -f -p 8080;  $(HUTCH) ps -a;  $(HUTCH) --help"
	@echo "   SDK       $(PY) -c 'import hutch; print(hutch.Client().machines.run(\"busybox\", [\"uname\", \"-a\"]).id)'"
	@echo "   stop      $(HUTCH) down   (machines keep running until the next hutch up)"

down: venv
	$(HUTCH) down

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

openapi: venv
	$(PY) -m hutch.api.app > docs/openapi.json

# Two pytest runs at once (one would leave a core idle: a third of the suite waits on guests and
# timers): the tests that boot guests under `hutch up` or name host-wide things (network
# namespaces, sandbox ids) in one, the rest in the other. Each session has a network namespace
# of its own (tests/conftest.py). The second run's output follows the first's.
# tests/test_makefile.py checks that the two lists hold every test. With PYTEST_ARGS: one run.
# pytest exits 5 when it collected nothing: make fails on any non-zero exit, so that fails too.
# (Under the shell's -e, each exit is caught: a failure in one run still prints the other's.)
TESTS_GUESTS = tests/runtime tests/cli tests/agent tests/network tests/storage tests/web
TESTS_REST = tests/api tests/services tests/store tests/client tests/bench tests/images \
	tests/model tests/wire tests/placement tests/http tests/test_config.py tests/test_makefile.py
test: setup lint
ifeq ($(strip $(PYTEST_ARGS)),)
	@rest=$$(mktemp); \
	HUTCH_CACHE_DIR=$(CACHE_DIR) $(VENV)/bin/pytest -p no:cacheprovider $(TESTS_REST) \
		> $$rest 2>&1 & pid=$$!; \
	guests=0; HUTCH_CACHE_DIR=$(CACHE_DIR) $(VENV)/bin/pytest $(TESTS_GUESTS) || guests=$$?; \
	others=0; wait $$pid || others=$$?; cat $$rest; rm -f $$rest; \
	echo "pytest: $(firstword $(TESTS_GUESTS)) ... exited $$guests, $(firstword $(TESTS_REST)) ... exited $$others"; \
	test $$guests -eq 0 && test $$others -eq 0
else
	HUTCH_CACHE_DIR=$(CACHE_DIR) $(VENV)/bin/pytest $(PYTEST_ARGS)
endif

bench: setup
	HUTCH_CACHE_DIR=$(CACHE_DIR) $(PY) bench/boot.py
	HUTCH_CACHE_DIR=$(CACHE_DIR) $(PY) -m bench.images
	HUTCH_CACHE_DIR=$(CACHE_DIR) $(PY) -m bench.api
	$(PY) -m bench.scheduler
	HUTCH_CACHE_DIR=$(CACHE_DIR) $(PY) -m bench.net
	HUTCH_CACHE_DIR=$(CACHE_DIR) $(PY) -m bench.rules
	HUTCH_CACHE_DIR=$(CACHE_DIR) $(PY) -m bench.volumes
	HUTCH_CACHE_DIR=$(CACHE_DIR) $(PY) -m bench.start
	HUTCH_CACHE_DIR=$(CACHE_DIR) $(PY) -m bench.trace
	$(PY) -m bench.ui

# The browser tests (tests/web/test_browser.py) photograph the dashboard's main pages into
# build/screenshots/, emptied at each run (a failed wait's into failed-*.png, not kept); the
# README shows the ones kept in docs/screenshots/.
screenshots:
	@shots=$$(ls build/screenshots/*.png 2>/dev/null | grep -v '/failed-' || true); \
	if [ -z "$$shots" ]; then \
		echo "no screenshots in build/screenshots: run make test, or $(VENV)/bin/pytest tests/web/test_browser.py"; \
		exit 1; \
	fi; \
	mkdir -p docs/screenshots; \
	cp $$shots docs/screenshots/; \
	echo "copied to docs/screenshots:" $$(basename -a $$shots)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache src/*.egg-info

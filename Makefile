# `make run` and `make test` work on a fresh machine: they create .venv and install what is
# missing; a second run only re-installs when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser database deploy-tools container-tools network-tools clients run test lint fmt bench bench-quick bench-tools native engine doctor gpu-check image image-test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The dashboard's browser tests drive Debian's chromium (Playwright with executable_path):
# installed here when missing, as root or through sudo.
CHROMIUM ?= chromium
browser:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the dashboard tests"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# The router's tests run on SQLite and on a real PostgreSQL server, which the tests start
# themselves (initdb in a temporary folder, a loopback port): Debian's postgresql package.
# The clock-jump tests step a router's wall clock with Debian's libfaketime. Both are
# installed here when missing.
database:
	@{ ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; } \
	&& ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || { \
		echo "installing Debian's postgresql and faketime for the database and clock tests"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql faketime; }

# The deployment files' checks: systemd-analyze verifies the units (Debian's systemd).
deploy-tools:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
		echo "installing Debian's systemd for the unit checks (systemd-analyze)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q systemd; }

# The network-fault tests (tests/network) put each process on a host of its own: network
# namespaces joined by veth cables (iproute2), partitions made with nftables.
network-tools:
	@PATH="$$PATH:/usr/sbin:/sbin"; command -v ip >/dev/null 2>&1 && command -v nft >/dev/null 2>&1 || { \
		echo "installing Debian's iproute2 and nftables for the network-fault tests"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q \
			iproute2 nftables; }

# The container checks (tests/deploy): podman builds and runs the image and the compose stack;
# mmdebstrap makes their base from Debian's packages, as this machine reaches no registry.
# netavark (podman's network for RUN steps and containers) drives iptables, which a slim
# machine may lack: without it every build fails with "netavark: No such file or directory".
container-tools:
	@command -v podman >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1 \
	&& command -v runc >/dev/null 2>&1 && PATH="$$PATH:/usr/sbin:/sbin" command -v iptables >/dev/null 2>&1 || { \
		echo "installing Debian's podman, mmdebstrap and runc for the image and compose tests"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q \
			podman mmdebstrap runc uidmap slirp4netns netavark aardvark-dns iptables; }

# The CPU image, localhost/llmlb:latest (over a Debian-made base where no registry answers:
# tests/deploy/containers.py). `docker build -t llmlb .` is the same on a connected machine.
image: setup container-tools
	$(BIN)/python -m tests.deploy.containers build

# The image run: `llmlb up` inside it answers "Paris" (part of `make test` too).
image-test: setup container-tools
	$(BIN)/pytest -q tests/deploy/test_image.py

# The client frameworks the suite drives against a real router (tests/clients): each Python
# one in a virtualenv of its own (their pins conflict with each other), and the Vercel AI SDK
# from the npm registry with Node.js (installed here when missing). A second run only
# reinstalls what changed.
CLIENT_VENVS := $(patsubst tests/clients/requirements/%.txt,.venv-clients/%/.installed,$(wildcard tests/clients/requirements/*.txt))
.venv-clients/%/.installed: tests/clients/requirements/%.txt
	test -x .venv-clients/$*/bin/python || $(PYTHON) -m venv .venv-clients/$*
	.venv-clients/$*/bin/python -m pip install --quiet --upgrade pip
	.venv-clients/$*/bin/python -m pip install --quiet -r $<
	touch $@
tests/clients/node/node_modules/.installed: tests/clients/node/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
		echo "installing Debian's nodejs and npm for the Vercel AI SDK's checks"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q nodejs npm; }
	cd tests/clients/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@
clients: $(CLIENT_VENVS) tests/clients/node/node_modules/.installed

# A router on http://127.0.0.1:32768 with one local node serving the small bundled model.
run: setup
	exec $(BIN)/llmlb up

test: setup browser database deploy-tools container-tools network-tools clients
	$(BIN)/pytest -q --durations=25 $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests bench hatch_build.py
	$(BIN)/ruff format --check src tests bench hatch_build.py
	$(BIN)/mypy

fmt: setup
	$(BIN)/ruff format src tests bench hatch_build.py
	$(BIN)/ruff check --fix src tests bench hatch_build.py

# The benchmark suite (about 30 min, half of it the soak; report in bench/results/<date>/).
# bench-quick: about 3 min.
bench: setup bench-tools
	$(BIN)/python -m bench all

bench-quick: setup bench-tools
	$(BIN)/python -m bench all --quick

# nginx, a peer in the router benchmark (SGLang's gateway and LiteLLM install themselves from
# PyPI into the bench cache).
bench-tools:
	@PATH="$$PATH:/usr/sbin:/sbin"; command -v nginx >/dev/null 2>&1 || { \
		echo "installing Debian's nginx, a peer in the router benchmark"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q \
			nginx-light; }

# Rebuild the inference engine (xllamacpp, the same version) from its source for this
# machine's CPU, naming the instruction sets the kernel lets processes use (AVX-512 and the
# like, which the prebuilt wheel leaves out), smoke-test it on the small model, and only then
# install it (llmlb engine install native). About 16 min on 2 cores; the wheel is kept in
# ~/.cache/llmlb/engine-wheels, so a second run only tests and installs.
# For a GPU: XLLAMACPP_BUILD_CUDA=1 make native (or XLLAMACPP_BUILD_HIP=1, _VULKAN=1).
native: setup
	$(BIN)/llmlb engine install native

# The engine build for this machine's GPUs (ENGINE=cuda|rocm|vulkan|metal|cpu to choose), and
# what a node here would use.
ENGINE ?= auto
engine: setup
	$(BIN)/llmlb engine install $(ENGINE)

doctor: setup
	$(BIN)/llmlb doctor

# On a GPU machine: the engine for its GPUs, then a node on the GPU against the same on the
# CPU (bench/gpu_check.py); the report goes to bench/results/<date>/.
gpu-check: setup
	$(BIN)/llmlb engine install auto
	$(BIN)/python -m bench gpu

clean:
	rm -rf $(VENV) .venv-clients tests/clients/node/node_modules .mypy_cache .ruff_cache .pytest_cache

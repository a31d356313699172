# llmlb: one image for the router (`serve`), a node (`node`) or both (`up`, the default).
#
#   docker build -t llmlb .                              # CPU (this file's defaults)
#   docker build -t llmlb:cuda --build-arg BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#       --build-arg ENGINE=cuda .                        # NVIDIA GPUs (driver for CUDA >= 12.4)
#   docker build -t llmlb:rocm --build-arg BASE=rocm/dev-ubuntu-24.04:6.4.1-complete \
#       --build-arg ENGINE=rocm .                        # AMD GPUs
#   docker run -p 32768:32768 -v llmlb:/var/lib/llmlb llmlb
#
# State (database, node token, model store) lives in the volume at /var/lib/llmlb.
# `docker stop` sends SIGTERM: llmlb stops taking requests and lets the ones in flight finish
# (shutdown_grace_seconds, 30 s), so give it the time: `docker stop -t 45`.

ARG BASE=python:3.11-slim-bookworm

# llama.cpp needs OpenMP's runtime; the GPU bases (NVIDIA's, AMD's) are Ubuntu without
# Python, so theirs is added (3.12).
FROM ${BASE} AS python
# hadolint ignore=SC2086
RUN python=""; \
    command -v python3 >/dev/null && python3 -c 'import ensurepip' 2>/dev/null \
        || python="python3 python3-venv ca-certificates"; \
    apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 $python \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*

FROM python AS build
# The commit `llmlb --version` names (the build context has no .git).
ARG LLMLB_COMMIT=""
# cpu, cuda, rocm or vulkan: the engine build of `llmlb engine install`.
ARG ENGINE=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml hatch_build.py README.md ./
COPY src ./src
RUN python3 -m venv /opt/llmlb \
    && LLMLB_COMMIT="$LLMLB_COMMIT" /opt/llmlb/bin/pip install . \
    && if [ "$ENGINE" != cpu ]; then /opt/llmlb/bin/llmlb engine install "$ENGINE"; fi \
    && /opt/llmlb/bin/llmlb --version

FROM python
ARG ENGINE=cpu
ARG UID=10001
RUN groupadd --system --gid "$UID" llmlb \
    && useradd --system --uid "$UID" --gid llmlb --home-dir /var/lib/llmlb --create-home \
        --shell /usr/sbin/nologin llmlb
COPY --from=build /opt/llmlb /opt/llmlb
# The CPU engine loads here and now (a GPU engine needs the driver, present only at run time).
RUN if [ "$ENGINE" = cpu ]; then /opt/llmlb/bin/python -c 'import xllamacpp'; fi
ENV PATH=/opt/llmlb/bin:$PATH \
    LLMLB_HOME=/var/lib/llmlb \
    LLMLB_ROUTER_HOST=0.0.0.0 \
    LLMLB_NODE_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
# Numeric, so that Kubernetes' runAsNonRoot can tell it is not root.
USER 10001:10001
WORKDIR /var/lib/llmlb
VOLUME ["/var/lib/llmlb"]
EXPOSE 32768 32769
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 CMD ["llmlb", "health"]
ENTRYPOINT ["llmlb"]
CMD ["up"]

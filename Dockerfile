# syntax=docker/dockerfile:1
# nasdeploy in a container: the build stage is the CI build (compile the native
# extension, install with README's steps, lint, run README's test command); the
# runtime stage is a slim image with `nasdeploy` as its entry point, run as a
# non-root user. docs/deploy.md has the docker and podman commands.
#
#   CPU (default):  docker build -t nasdeploy:cpu .
#   CUDA:           docker build --build-arg VARIANT=cu128 -t nasdeploy:cu128 .
#
# VARIANT is the PyTorch wheel variant: it picks the base images below and the
# index torch comes from (https://download.pytorch.org/whl/${VARIANT}), pinned to
# the version the project tests. For cu128 a CUDA devel image is the build base
# (nvcc is found, so setup.py also builds _mixedop_cuda) and a CUDA base image
# the runtime one.
ARG VARIANT=cpu
# The CPU stages' bases: python:3.11-slim, or any Debian-family image with a Python
# 3.11 (.ci/container makes Debian bookworm ones with mmdebstrap and passes them here:
# the build base with python3-dev, the runtime base without headers or pip).
ARG BASE_IMAGE=python:3.11-slim
ARG RUNTIME_BASE_IMAGE=python:3.11-slim
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04
ARG CUDA_BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

# ----------------------------------------------------------------- bases per variant
# apt leaves no cache behind: python:3.11-slim deletes downloaded packages itself, a plain
# Debian root file system does not, hence `apt-get clean` beside the lists' removal.

FROM ${BASE_IMAGE} AS build-cpu
# g++ for the native extension; Debian's own python3 (unlike the python image's, built
# into /usr/local with its headers) also needs python3-dev for Python.h, and python3-venv.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && if dpkg -s python3 >/dev/null 2>&1; then \
        apt-get install -y --no-install-recommends python3-dev python3-venv; fi \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

FROM ${CUDA_DEVEL_IMAGE} AS build-cu128
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ python3 python3-dev python3-venv \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

FROM ${RUNTIME_BASE_IMAGE} AS runtime-cpu
# libgomp1: the OpenMP runtime of the compiled mixed-op kernel
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && if dpkg -s python3 >/dev/null 2>&1; then \
        apt-get install -y --no-install-recommends python3-venv; fi \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

FROM ${CUDA_BASE_IMAGE} AS runtime-cu128
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 python3 python3-venv \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# ----------------------------------------------------------------- build = containerized CI

# DL3006: "build-cpu" / "build-cu128" are the stages above, picked by VARIANT, not images to tag.
# hadolint ignore=DL3006
FROM build-${VARIANT} AS build
ARG VARIANT
# An ARG, so a build can take torch from elsewhere (.ci/container passes the host's index).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${VARIANT}
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The install steps are README's "## Install" block (tests/test_docker.py keeps them equal).
# torch first, before the sources are copied, so its large download stays cached across source changes.
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir torch==2.13.0 --index-url "${TORCH_INDEX_URL}" \
    && groupadd --gid 10001 ci \
    && useradd --create-home --uid 10001 --gid 10001 ci \
    && install -d -o 10001 -g 10001 /src
WORKDIR /src
COPY --chown=10001:10001 . .
# DL3013: this installs the project itself; its dependencies' ranges live in pyproject.toml.
# Editable, as README says, so README's `python -m pytest` (which puts /src on sys.path) tests
# the compiled tree. The wheel for the runtime stage is built from the same tree.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -e ".[dev,serve,openvino]" \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .
# CI's lint and README's test command run as a normal user (permission checks mean nothing as
# root). The test run is the last step: an image exists only for a tree that passed.
USER 10001:10001
RUN nasdeploy info \
    && ruff check . \
    && lint-imports
RUN python -m pytest

# ----------------------------------------------------------------- runtime

# DL3006: "runtime-cpu" / "runtime-cu128" are the stages above, picked by VARIANT.
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime
ARG VARIANT
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${VARIANT}
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
# The wheel is bind-mounted from the build stage, whose last step is the test run. The mount
# leaves no layer behind. Only torch and the package's own dependencies: no extras (the test
# and lint tools, Triton's schema, OpenVINO stay in the build stage).
# Size (docs/deploy.md): torch's C++ test binaries, test data and headers (only needed to
# compile extensions, and ours is compiled in the wheel) are removed, and so are pip and
# setuptools. Bytecode is not compiled for all of site-packages (a quarter of the venv):
# a tiny pipeline run as root writes it for exactly the modules the CLI imports (the
# non-root user cannot write it, and without it every command pays ~5 s of compiling);
# the run also smoke-tests the runtime image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/venv \
    && pip install --no-cache-dir --no-compile torch==2.13.0 --index-url "${TORCH_INDEX_URL}" \
    && pip install --no-cache-dir --no-compile /wheels/nasdeploy-*.whl \
    && pip uninstall --yes --quiet setuptools pip \
    && torch_dir="$(python -c 'import importlib.util as u; print(u.find_spec("torch").submodule_search_locations[0])')" \
    && rm -rf "$torch_dir/test" "$torch_dir/include" \
    && find "$torch_dir/bin" -mindepth 1 -not -name torch_shm_manager -exec rm -rf {} + \
    && HOME=/tmp/warm nasdeploy pipeline --preset tiny --out /tmp/warm/run --quiet >/dev/null \
    && rm -rf /tmp/warm \
    && groupadd --gid 10001 nasdeploy \
    && useradd --create-home --uid 10001 --gid 10001 nasdeploy
USER 10001:10001
WORKDIR /home/nasdeploy
ENTRYPOINT ["nasdeploy"]
CMD ["--help"]

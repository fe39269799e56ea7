# syntax=docker/dockerfile:1
# nasdeploy in a container: the build stage is the CI build (compile the native
# extension, install with README's steps, run the test suite); the runtime stage
# is a slim image with `nasdeploy` as its entry point, run as a non-root user.
#
#   CPU (default):  docker build -t nasdeploy:cpu .
#   CUDA:           docker build --build-arg VARIANT=cuda -t nasdeploy:cuda .
#
# VARIANT picks the base images below: python:3.11-slim for CPU; a CUDA devel
# image for the build (nvcc is found, so setup.py also builds _mixedop_cuda) and
# a CUDA base image for the runtime. Torch comes from the PyTorch index of the
# variant, pinned to the version the project tests.
ARG VARIANT=cpu

# ----------------------------------------------------------------- bases per variant

FROM python:3.11-slim AS build-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:12.8.1-devel-ubuntu24.04 AS build-cuda
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM python:3.11-slim AS runtime-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# libgomp1: the OpenMP runtime of the compiled mixed-op kernel
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:12.8.1-base-ubuntu24.04 AS runtime-cuda
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# ----------------------------------------------------------------- build = containerized CI

# DL3006: "build-cpu" / "build-cuda" are the stages above, picked by VARIANT, not images to tag.
# hadolint ignore=DL3006
FROM build-${VARIANT} AS build
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
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
# The wheel for the runtime stage is built from the same tree as the tested install.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[dev,serve,openvino]" \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .
# Tests run as a normal user (permission checks mean nothing as root) against the installed
# package: the `pytest` script, unlike `python -m pytest`, does not put /src on sys.path.
USER 10001:10001
RUN pytest -q -p no:cacheprovider

# ----------------------------------------------------------------- runtime

# DL3006: "runtime-cpu" / "runtime-cuda" are the stages above, picked by VARIANT.
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
# The wheel is bind-mounted from the build stage, whose last step is the test run: an image
# exists only for a tree that passed. The mount leaves no layer behind.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/venv \
    && pip install --no-cache-dir torch==2.13.0 --index-url "${TORCH_INDEX_URL}" \
    && pip install --no-cache-dir /wheels/nasdeploy-*.whl \
    && groupadd --gid 10001 nasdeploy \
    && useradd --create-home --uid 10001 --gid 10001 nasdeploy
USER 10001:10001
WORKDIR /home/nasdeploy
ENTRYPOINT ["nasdeploy"]
CMD ["--help"]

# The project image: every pipeline component and the predictor run in it.
#   CUDA: docker build -t REGISTRY/sherlock:0.1.0-cuda .
#   CPU:  docker build --build-arg TORCH_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
#                      --build-arg TORCH_LOCAL_VERSION=+cpu -t REGISTRY/sherlock:0.1.0-cpu .
# PyPI's torch wheel for Linux carries the CUDA runtime; GPU nodes provide the driver (NVIDIA
# container toolkit). The CPU variant takes the CPU build of the same version.
# Every pip call is constrained by requirements/constraints.txt, the lock the tests run against.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_EXTRA_INDEX_URL=""
ARG TORCH_LOCAL_VERSION=""
ARG GIT_COMMIT=unknown
ARG IMAGE_REF=unknown
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    DS_BUILD_OPS=0 \
    MPLCONFIGDIR=/tmp/matplotlib \
    SHERLOCK_CACHE=/cache \
    SHERLOCK_GIT_COMMIT=${GIT_COMMIT} \
    SHERLOCK_IMAGE=${IMAGE_REF}

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin sherlock \
    && mkdir -p /cache && chown sherlock /cache
WORKDIR /app

COPY requirements/constraints.txt requirements/constraints.txt
RUN pip install -c requirements/constraints.txt ${TORCH_EXTRA_INDEX_URL:+--extra-index-url ${TORCH_EXTRA_INDEX_URL}} \
        "torch==2.13.0${TORCH_LOCAL_VERSION}"
COPY pyproject.toml README.md ./
COPY sherlock sherlock
COPY components components
COPY configs configs
RUN pip install -c requirements/constraints.txt ".[train,pipelines,tracking,serving]" \
    && pip check

USER 1000
CMD ["sherlock", "--help"]

# The project image: every pipeline component and the predictor run in it.
#   CUDA: docker build -t REGISTRY/sherlock:0.1.0-cuda .
#   CPU:  docker build --build-arg TORCH_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
#                      --build-arg TORCH_LOCAL_VERSION=+cpu -t REGISTRY/sherlock:0.1.0-cpu .
#   Without a registry (podman, Debian's packages only): `make image` (docs/cluster.md), the CUDA variant
#   (PyPI's wheel, which runs on the CPU as well).
# PyPI's torch wheel for Linux carries the CUDA runtime; GPU nodes provide the driver (NVIDIA
# container toolkit). The CPU variant takes the CPU build of the same version.
# Every pip call is constrained by requirements/constraints.txt, the lock the tests run against.
# Two stages: the build stage has a compiler and prebuilds DeepSpeed's CPU Adam op (ZeRO optimizer
# offload, configs/deepspeed/*offload*); the runtime stage gets the virtual environment without it.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_EXTRA_INDEX_URL=""
ARG TORCH_LOCAL_VERSION=""
# a machine's own package index, mounted read-only into the build (`make image`); none by default
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PATH=/opt/sherlock/bin:${PATH}
RUN apt-get update && apt-get install -y --no-install-recommends g++ libgomp1 && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/sherlock
WORKDIR /app
COPY requirements/constraints.txt requirements/constraints.txt
RUN pip install -c requirements/constraints.txt ${TORCH_EXTRA_INDEX_URL:+--extra-index-url ${TORCH_EXTRA_INDEX_URL}} \
        "torch==2.14.1${TORCH_LOCAL_VERSION}" "torchvision==0.29.1${TORCH_LOCAL_VERSION}" \
    && pip install -c requirements/constraints.txt ninja py-cpuinfo packaging setuptools wheel \
    && DS_BUILD_OPS=0 DS_BUILD_CPU_ADAM=1 pip install --no-build-isolation -c requirements/constraints.txt deepspeed
COPY pyproject.toml README.md ./
COPY sherlock sherlock
COPY components components
COPY configs configs
RUN pip install -c requirements/constraints.txt ".[train,pipelines,tracking,serving]" && pip check

FROM ${PYTHON_IMAGE}
ARG GIT_COMMIT=unknown
ARG IMAGE_REF=unknown
LABEL org.opencontainers.image.revision=${GIT_COMMIT} \
      org.opencontainers.image.source=https://github.com/sherlock-vlm/sherlock
ENV PATH=/opt/sherlock/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    DS_BUILD_OPS=0 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    SHERLOCK_CACHE=/cache \
    SHERLOCK_GIT_COMMIT=${GIT_COMMIT} \
    SHERLOCK_IMAGE=${IMAGE_REF}
# libgomp: the prebuilt CPU Adam op links OpenMP. /cache is writable by whatever uid a manifest runs
# the image as (1000 here, 10001 in manifests/); on a read-only root it is an emptyDir.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin sherlock \
    && mkdir -p /cache && chmod 1777 /cache
COPY --from=build /opt/sherlock /opt/sherlock
COPY --from=build /app /app
WORKDIR /app
USER 1000
CMD ["sherlock", "--help"]

"""Self-correcting vision-language models (Sherlock, SCL, STIC) on Kubernetes."""

__version__ = "0.1.0"
IMAGE_REPOSITORY = "ghcr.io/sherlock-vlm/sherlock"  # tags <version>-cuda (GPU steps, predictor) and <version>-cpu
GPU_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}-cuda"
CPU_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}-cpu"

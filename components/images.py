"""The project images every component runs in, fixed at compile time.

``SHERLOCK_IMAGE`` (CUDA, GPU steps) and ``SHERLOCK_CPU_IMAGE`` (CPU steps) in the environment of
``python -m pipelines.<recipe>`` override the defaults (this package version's images).
"""

import os

import sherlock

IMAGE = os.environ.get("SHERLOCK_IMAGE", sherlock.GPU_IMAGE)
CPU_IMAGE = os.environ.get("SHERLOCK_CPU_IMAGE", sherlock.CPU_IMAGE)
GPU = {"base_image": IMAGE, "install_kfp_package": False}
CPU = {"base_image": CPU_IMAGE, "install_kfp_package": False}

"""Self-correcting vision-language models (Sherlock, SCL, STIC) on Kubernetes."""

__version__ = "0.1.0"

"""The Sherlock stages as library functions: one typed config in, directories out.

Each module holds a config dataclass and a ``run_*`` function; the CLI (``sherlock <stage>``) and
the Kubeflow components call these functions and add no logic of their own.
"""

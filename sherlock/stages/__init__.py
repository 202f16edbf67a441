"""The Sherlock stages as library functions: one typed config in, directories out.

Each module holds a config dataclass and a ``run_*`` function; the CLI (``sherlock <stage>``) and
the Kubeflow components call these functions and add no logic of their own. A stage module imports
torch, transformers and TRL inside the functions that run the stage, not at import: ``sherlock <stage>
--help`` reads the config class (and the settings it inherits from the torch-free
:mod:`sherlock.decoding`, :mod:`sherlock.training.settings` and :mod:`sherlock.losses`) without them.
"""

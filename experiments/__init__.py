"""The research harness: every recipe on the synthetic task over several seeds, with its baselines,
ablations, gates and paired statistics (``python -m experiments``; docs/results.md). It calls the
library's stage functions; nothing in ``sherlock/`` imports it."""

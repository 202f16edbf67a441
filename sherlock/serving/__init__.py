"""Serving: the KServe predictor and the local model server."""

"""Trainers built on TRL."""

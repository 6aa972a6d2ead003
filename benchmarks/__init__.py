"""Benchmarks of the template and of the nodes it renders (`python benchmarks/run.py`)."""

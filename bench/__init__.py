"""Benchmarks of the platform: `python bench/run.py [--quick]` prints the targets table.

A package so the load generator and the baselines can run as their own processes
(`python -m bench.load`, `python -m bench.baselines`) and not share the GIL with the code that
starts and samples the platform.
"""

"""Benchmarks: scripts that print bronze beside its peers or the ideal. Not part of the suite.

Run each as a module from the repository root (``.venv/bin/python -m bench.power``), so the
repository root is on the import path and ``bench.*``, the product packages and the real peers
in ``tests.peers`` (with ``tests.support``) import without path manipulation.
"""

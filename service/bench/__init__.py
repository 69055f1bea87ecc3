"""Benchmarks: policy quality on the papers' grids, and performance (``gnbsched bench``)."""

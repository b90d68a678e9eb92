"""Figures and the performance benchmarks."""

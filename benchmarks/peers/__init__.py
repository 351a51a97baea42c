"""Peer libraries in side virtual environments, for benchmarks that compare against them (see envs.py)."""

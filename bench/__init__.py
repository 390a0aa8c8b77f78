"""Benchmarks: `make bench` (python -m bench). Each figure is compared with a peer measured
in the same run on the same machine, and written with the machine and versions to
bench/results.json. Never timed assertions in tests."""

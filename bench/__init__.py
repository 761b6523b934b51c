"""Throughput benchmarks (see bench/README.md). Not imported by emojax."""

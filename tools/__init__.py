"""Repository tools: the demo and the benchmark behind `make demo` and `make bench`."""

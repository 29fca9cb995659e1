"""Data sets: two moons, the MNIST family (IDX files), in-memory batching."""

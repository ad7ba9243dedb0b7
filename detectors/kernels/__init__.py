"""Private numba kernels: arrays in, arrays out. Use the public wrappers in ``detectors``."""

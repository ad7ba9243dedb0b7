"""recp-monitor analytics: numba kernels, detectors, baselines, savings and the service."""

"""The runtime under every backend: ordered execution, buffers, the reduction table."""

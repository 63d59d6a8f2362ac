"""Backends: the algorithms over sideband's transports, or a library's own stack."""

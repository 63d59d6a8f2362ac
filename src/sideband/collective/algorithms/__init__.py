"""Collective algorithms, written once against ``comm``: flat, host-aware, zero-copy, arena."""

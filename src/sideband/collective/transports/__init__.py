"""Transports: how bytes move between two ranks (shared memory on one host, TCP across hosts)."""

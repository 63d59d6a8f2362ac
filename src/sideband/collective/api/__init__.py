"""The public API of groups: ``Group``, the per-process table, the driver side, and the edge."""

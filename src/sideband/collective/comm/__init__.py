"""Messages between the ranks of one group: framing, matching, waiting, liveness, by-reference."""

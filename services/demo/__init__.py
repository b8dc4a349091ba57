"""`reach demo`: synthetic cases and simulated consultants, over the public API."""

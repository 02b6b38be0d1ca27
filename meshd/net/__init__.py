"""Socket I/O for the hot path: non-blocking stdlib sockets driven by trio's low-level waits."""

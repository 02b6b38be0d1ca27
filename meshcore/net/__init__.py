"""Networking machinery both daemons share: the accept loop with connection-level limits."""

"""L4 (TCP) proxying: the byte pump between a downstream and an upstream connection."""

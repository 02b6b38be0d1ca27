"""Inbound access policy (L4 identity and L7 rules, JWT), used by the HTTP and TCP paths."""

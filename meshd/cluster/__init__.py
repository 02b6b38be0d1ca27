"""Clusters: load balancing, connection pools."""

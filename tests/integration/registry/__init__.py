"""Client-compatibility tests of the embedded Consul-compatible registry (``controld registry``)."""

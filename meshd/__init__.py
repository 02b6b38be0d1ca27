"""meshd: the mesh's sidecar proxy (data plane)."""

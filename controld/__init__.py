"""controld: the mesh's control plane (registry adapter, compiler, CA, push, HTTP API)."""

"""meshd's side of the control plane: snapshots from controld (long-poll, ACK/NACK, cache)."""

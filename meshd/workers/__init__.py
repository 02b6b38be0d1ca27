"""Worker processes of one sidecar: the supervisor (primary), the channel, the follower."""

from meshd.workers.supervisor import WorkerSupervisor

__all__ = ["WorkerSupervisor"]

"""Connected TCP socket pairs on 127.0.0.1 for tests (``tests/`` is on ``sys.path``, see
``conftest.py``)."""

from __future__ import annotations

import socket

__all__ = ["tcp_pair"]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (client, server) pair of TCP sockets on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        try:
            server, _addr = listener.accept()
        except BaseException:
            client.close()
            raise
    return client, server

"""The primary-worker channel: framing (values) and a feed and follower over a socketpair."""

from __future__ import annotations

import socket

import pytest
import trio

from meshcore.model import Snapshot
from meshd.errors import SnapshotRejected
from meshd.workers.channel import ChannelError, LineReader, encode
from meshd.workers.feed import WorkerFeed, WorkerLink
from meshd.workers.follower import WorkerFollower

pytestmark = pytest.mark.timeout(30)


def test_messages_split_anywhere_come_out_whole() -> None:
    data = encode({"kind": "a", "n": 1}) + encode({"kind": "b", "s": "x\ny"})
    for cut in range(len(data) + 1):
        reader = LineReader()
        got = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert got == [{"kind": "a", "n": 1}, {"kind": "b", "s": "x\ny"}]


@pytest.mark.parametrize("line", [b"not json\n", b"[1]\n", b'{"kind": 1}\n'])
def test_malformed_messages_close_the_channel(line: bytes) -> None:
    with pytest.raises(ChannelError):
        LineReader().feed(line)


def test_oversized_message_closes_the_channel() -> None:
    with pytest.raises(ChannelError, match="larger"):
        LineReader(max_message=10).feed(b"x" * 11)


def _snapshot(version: int, mtls: str = "disabled") -> Snapshot:
    return Snapshot.model_validate({"version": version, "mtls": mtls})


async def test_feed_and_follower_keep_a_worker_on_the_primary_snapshot() -> None:
    """Snapshot on connect, each update, the worker's answers, the drain, then EOF."""
    feed = WorkerFeed()
    feed.publish_snapshot(_snapshot(1))
    applied: list[int] = []
    events: list[str] = []

    def apply(snapshot: Snapshot) -> None:
        if snapshot.mtls == "strict":
            raise SnapshotRejected("no STRICT here")
        applied.append(snapshot.version)
        follower.report_applied(snapshot.version)

    ours, theirs = socket.socketpair()
    follower = WorkerFollower(
        theirs,
        apply=apply,
        on_drain=lambda: events.append("drain"),
        on_primary_gone=lambda: events.append("gone"),
    )
    link = WorkerLink(1, 4242)

    async def wait(condition: object) -> None:
        with trio.fail_after(10):
            while not condition():  # type: ignore[operator]
                await trio.sleep(0.01)

    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.serve, link, stream)
        await nursery.start(follower.run)
        with trio.fail_after(10):
            await follower.synced.wait()
        assert applied == [1]
        await wait(lambda: link.version == 1)
        assert feed.describe() == [{"index": 1, "pid": 4242, "version": 1, "error": None}]
        # Intermediate versions may be skipped; the latest always arrives.
        feed.publish_snapshot(_snapshot(2))
        feed.publish_snapshot(_snapshot(3))
        await wait(lambda: link.version == 3)
        assert applied[-1] == 3
        feed.publish_snapshot(_snapshot(4, mtls="strict"))
        await wait(lambda: link.error is not None)
        assert link.error is not None and "no STRICT here" in link.error
        assert link.version == 3
        feed.announce_drain()
        await wait(lambda: events == ["drain"])
        await stream.aclose()  # the primary is gone
        await wait(lambda: events == ["drain", "gone"])
        nursery.cancel_scope.cancel()
    assert feed.links == {}

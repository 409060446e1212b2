"""The incoming box: a service delivers into MX, devices process it (SPEC 6)."""

from __future__ import annotations

import pytest

from blobsync.client import ClientError, IncomingConsumer
from tests.helpers.client import Recorder, deliver


async def test_incoming_round_processes_oldest_first_and_cleans_up(devices, account) -> None:
    m = await devices("a")
    messages = {f"msg{i}": f"encrypted mail {i}".encode() for i in range(5)}
    await deliver(account.server, "alice", messages)
    assert await m.remote_count("MX", filter_flag="PENDING") == 5
    first, second = Recorder(), Recorder()
    assert isinstance(first, IncomingConsumer)
    m.register_consumer(first)
    m.register_consumer(second)
    report = await m.process_incoming(limit=3)
    assert report.processed == 3 and report.failed == 0 and report.skipped == 0
    assert [b for b, _ in first.processed] == ["msg0", "msg1", "msg2"]  # oldest first
    assert first.processed[0][1] == b"encrypted mail 0"  # raw external payload, as delivered
    assert second.saved["msg1"] == b"ENCRYPTED MAIL 1"
    assert sorted(await m.remote_list("MX")) == ["msg3", "msg4"]  # processed ones deleted
    report = await m.process_incoming()
    assert report.processed_ids == ["msg3", "msg4"]
    assert await m.remote_list("MX") == []
    # incoming messages never enter the local store
    assert await m.local_list("MX") == []


async def test_failed_message_is_flagged_and_not_retried(devices, account) -> None:
    m = await devices("a")
    await deliver(account.server, "alice", {"good": b"fine", "bad": b"poison pill"})
    rec = Recorder()
    m.register_consumer(rec)
    report = await m.process_incoming()
    assert report.processed_ids == ["good"] and report.failed_ids == ["bad"]
    assert await m.get_flags("bad", namespace="MX") == ["FAILED"]
    assert "bad" not in rec.saved
    again = await m.process_incoming()
    assert (again.processed, again.failed, again.skipped) == (0, 0, 0)
    assert await m.remote_list("MX") == ["bad"]


async def test_message_reserved_by_another_device_is_skipped(devices, account) -> None:
    a = await devices("a")
    b = await devices("b")
    await deliver(account.server, "alice", {"m1": b"one", "m2": b"two"})

    class Racer(Recorder):
        async def process(self, blob_id: str, payload: bytes) -> object:
            if blob_id == "m1":
                # while a works on m1 (having listed both), b reserves m2 first
                await b.set_flags("m2", ["PROCESSING"], namespace="MX", expect="PENDING")
            return await super().process(blob_id, payload)

    a.register_consumer(Racer())
    report = await a.process_incoming()
    assert report.processed_ids == ["m1"]
    assert report.skipped_ids == ["m2"]
    assert await a.get_flags("m2", namespace="MX") == ["PROCESSING"]  # b's, untouched


async def test_no_consumer_is_an_error(devices, account) -> None:
    m = await devices("a")
    await deliver(account.server, "alice", {"m": b"x"})
    with pytest.raises(ClientError, match="consumer"):
        await m.process_incoming()
    assert await m.get_flags("m", namespace="MX") == ["PENDING"]  # untouched

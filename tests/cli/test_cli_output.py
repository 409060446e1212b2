"""The CLI's output helpers: a JSON error written once, tables aligned."""

from __future__ import annotations

import json

import pytest

from blobsync.cli.output import Output, table


def test_output_json_error_only_once(capsys: pytest.CaptureFixture[str]) -> None:
    out = Output(json_mode=True)
    out.line("hidden in json mode")
    out.document({"a": 1})
    out.error(1, "late failure")
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == [{"a": 1}]
    text = Output(json_mode=False)
    text.line("shown")
    text.document({"a": 1})
    assert capsys.readouterr().out == "shown\n"


def test_table_aligns() -> None:
    assert table([("SYNCED", "12"), ("LOCAL_ONLY", " 3")], ("STATUS", "BLOBS")).splitlines() == [
        "STATUS      BLOBS", "SYNCED      12", "LOCAL_ONLY   3"]

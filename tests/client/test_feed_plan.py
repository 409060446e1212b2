"""The planner's reading of a change feed page (client/plan.py ``plan_feed``): plain data
in, plain data out, the listing's rules plus the tags (SPEC 8)."""

from __future__ import annotations

from blobsync.client import SyncStatus
from blobsync.client.plan import plan_feed

T1, T2 = b"1" * 16, b"2" * 16
S = SyncStatus


def test_puts_of_unknown_ids_are_downloaded_and_known_tags_are_left_alone() -> None:
    plan = plan_feed([("new", "put", T1), ("same", "put", T1)],
                     {"same": S.SYNCED.value}, {"same": T1})
    assert plan.new == ["new"] and plan.replace == [] and plan.gone_here == []


def test_a_put_with_another_tag_replaces_a_held_blob() -> None:
    plan = plan_feed([("x", "put", T2), ("gave-up", "put", T1), ("unread", "put", T1)],
                     {"x": S.SYNCED.value, "gave-up": S.FAILED_DOWNLOAD.value,
                      "unread": S.SYNCED.value},
                     {"x": T1, "unread": None})
    assert plan.replace == ["gave-up", "unread", "x"] and plan.new == []


def test_the_last_put_or_delete_of_a_blob_wins_and_flags_change_nothing() -> None:
    held = {"a": S.SYNCED.value, "b": S.SYNCED.value}
    plan = plan_feed(
        [("a", "delete", None), ("a", "put", T2), ("b", "put", T1), ("b", "delete", None),
         ("b", "flags", None), ("c", "flags", None)],
        held, {"a": T1, "b": T1},
    )
    assert plan.replace == ["a"] and plan.gone_here == ["b"] and plan.new == []


def test_deletes_follow_the_listing_rules_for_tombstones() -> None:
    held = {
        "synced": S.SYNCED.value, "waiting": S.PENDING_DOWNLOAD.value,
        "failed": S.FAILED_DOWNLOAD.value, "deleting": S.PENDING_DELETE.value,
        "in-flight": S.PENDING_DELETE.value, "mine": S.PENDING_UPLOAD.value,
        "refused": S.FAILED_UPLOAD.value, "kept": S.LOCAL_ONLY.value,
    }
    plan = plan_feed([(b, "delete", None) for b in [*held, "unknown"]], held, {},
                     uploading={"in-flight"})
    assert plan.gone_here == ["failed", "synced", "waiting"]
    assert plan.vanished == ["deleting"]
    assert (plan.new, plan.replace, plan.already) == ([], [], [])


def test_a_put_over_a_pending_upload_is_compared_only_when_large() -> None:
    held = {"small": S.PENDING_UPLOAD.value, "large": S.PENDING_UPLOAD.value,
            "going": S.PENDING_DELETE.value, "here": S.LOCAL_ONLY.value}
    plan = plan_feed([(b, "put", T1) for b in held], held, {}, large_pending_upload={"large"})
    assert plan.already == ["large"]
    assert (plan.new, plan.replace, plan.gone_here, plan.vanished) == ([], [], [], [])

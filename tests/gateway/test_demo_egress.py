"""Egress's demo scenes run end to end on both backends, check themselves, and leave in the log
the flow, extract and manifest entries and the refusal they tell of."""

from __future__ import annotations

import json

from bastion.demo.egress import AGGREGATE_FLOW, REFUSED_FLOW, VIDEO_FLOW, run_demo

from .conftest import DemoScene


def test_egress_scenes(demo_scene: DemoScene) -> None:
    report, entries = demo_scene(run_demo)
    assert report["ok"] and len(report["steps"]) == 6
    events = [json.loads(e) for e in entries]
    flows = [(e["flow"], e["step"]) for e in events if e["type"] == "egress.flow"]
    assert (VIDEO_FLOW, "loaded") in flows and (AGGREGATE_FLOW, "loaded") in flows
    # The refusal is recorded, with its reasons, and nothing of that flow ever loaded.
    (refused,) = [e for e in events if e["type"] == "egress.flow" and e["flow"] == REFUSED_FLOW]
    assert refused["step"] == "refused"
    assert {"field.protected", "recipient.denied"} <= set(refused["reasons"])
    assert report["refused"]["codes"] == sorted(refused["reasons"])
    # Two runs of the video flow: each an extract (only the first opens records) then a
    # manifest, the second carrying the erased creator's videos as tombstones.
    manifests = [e for e in events if e["type"] == "egress.manifest" and e["flow"] == VIDEO_FLOW]
    assert [(m["run"], m["tombstones"]) for m in manifests] == [(1, 0), (2, 5)]
    assert manifests[1]["rows"] == 0
    extracts = [e for e in events if e["type"] == "egress.extract" and e["flow"] == VIDEO_FLOW]
    assert len(extracts) == 1 and extracts[0]["fields"] == sorted(
        ["video_id", "category", "region", "duration_s", "uploaded_at"]
    )
    first_manifest = events.index(manifests[0])
    assert events.index(extracts[0]) < first_manifest
    # The aggregate: one full extract, one release of every declared region, no tombstones.
    (released,) = [
        e for e in events if e["type"] == "egress.manifest" and e["flow"] == AGGREGATE_FLOW
    ]
    assert released["rows"] == 8 and released["tombstones"] == 0
    (agg_extract,) = [
        e for e in events if e["type"] == "egress.extract" and e["flow"] == AGGREGATE_FLOW
    ]
    assert agg_extract["mode"] == "full" and agg_extract["fields"] == ["region", "watch_time_s"]
    assert report["aggregate_run"]["manifest_id"] == released["manifest_id"]
    # The parent verified every delivery, flow by flow in run order, and refused the replay
    # and the tampered chunk.
    assert [(v["flow"], v["run"]) for v in report["verified"]] == [
        (AGGREGATE_FLOW, 1),
        (VIDEO_FLOW, 1),
        (VIDEO_FLOW, 2),
    ]
    assert [v["manifest_id"] for v in report["verified"]] == [
        released["manifest_id"],
        *(m["manifest_id"] for m in manifests),
    ]
    assert report["refusals"] == {"replay": "egress.replay", "tampered": "egress.chunk.tampered"}


def test_the_log_of_the_egress_scenes_names_no_email_and_no_raw_video_id(
    demo_scene: DemoScene,
) -> None:
    from bastion.demo.egress import sample_video

    _, entries = demo_scene(run_demo)
    raw = [str(sample_video(n)["video_id"]).encode() for n in range(3)] + [b"@example.com"]
    egress = [e for e in entries if b'"type":"egress.' in e]
    assert egress and [v for e in egress for v in raw if v in e] == []

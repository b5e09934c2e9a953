"""`avatar batch` through the local stack: a folder of 20 pairs, 2 of them bad, ends with 18 videos and a report; run
again, it sends nothing twice."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from support.e2e import E2E

from avatar_cli.__main__ import main
from avatar_local.simulators.media import make_sample_portrait, make_sample_speech, probe_media

pytestmark = pytest.mark.e2e

# Room for the whole batch at once: the quota's pacing is the admission tests' business, not this one's.
STACK_PARAMETERS = {"WaveSpeedSubmissionsPerMinute": "120", "WaveSpeedRendersAtOnce": "20"}


def stack_file(e2e: E2E, tmp_path: Path) -> Path:
    assert e2e.stack.info is not None
    info = e2e.stack.info
    path = tmp_path / "stack.json"
    path.write_text(
        json.dumps(
            {
                "bucket": info.bucket,
                "table": info.table,
                "region": info.region,
                "aws_endpoint_url": info.aws_endpoint_url,
            }
        )
    )
    return path


def test_a_folder_of_20_pairs_2_bad_ends_with_18_videos_and_a_report_and_resumes_without_resending(
    e2e: E2E, tmp_path: Path
) -> None:
    # Given a folder of 20 faces and voices paired by stem: 18 good, one voice too short and one face too small
    folder = tmp_path / "clips"
    folder.mkdir()
    face, voice = make_sample_portrait(), make_sample_speech(2.5)
    for number in range(18):
        (folder / f"speaker-{number:02d}.png").write_bytes(face)
        (folder / f"speaker-{number:02d}.mp3").write_bytes(voice)
    (folder / "short-voice.png").write_bytes(face)
    (folder / "short-voice.mp3").write_bytes(make_sample_speech(1.0))
    (folder / "small-face.png").write_bytes(make_sample_portrait(200, 260))
    (folder / "small-face.mp3").write_bytes(voice)
    out = tmp_path / "out"
    argv = ["--stack-file", str(stack_file(e2e, tmp_path)), "batch", str(folder), "--out", str(out)]
    before = len(e2e.stack.simulator.submissions())

    # When the batch runs
    exit_code = main([*argv, "--interval", "0.5", "--timeout", "180", "--concurrency", "6"])

    # Then it ends with 18 videos, each a real MP4, and a report of the 20 pairs saying why the 2 failed
    with (out / "report.csv").open(newline="") as handle:
        rows = {row["pair"]: row for row in csv.DictReader(handle)}
    assert exit_code == 1  # not every pair made a video
    assert len(rows) == 20
    completed = [row for row in rows.values() if row["status"] == "COMPLETED"]
    assert len(completed) == 18
    for row in completed:
        info = probe_media(row["video"])
        assert info.has_video and info.has_audio
        assert row["estimated_cost_usd"] == "0.25"  # Kling v1 standard, one started 5 s at WaveSpeed
    assert rows["short-voice"]["status"] == "REJECTED" and "it must last at least 2 s" in rows["short-voice"]["reason"]
    assert rows["small-face"]["status"] == "REJECTED" and "at least 300 px" in rows["small-face"]["reason"]
    assert len(e2e.stack.simulator.submissions()) == before + 18

    # When the same command runs again
    assert main([*argv, "--interval", "0.5", "--timeout", "60"]) == 1
    # Then nothing was uploaded or sent again, and the report is the same
    assert len(e2e.stack.simulator.submissions()) == before + 18
    with (out / "report.csv").open(newline="") as handle:
        assert {row["pair"]: row for row in csv.DictReader(handle)} == rows

"""`avatar batch`'s own rules, on a scripted pipeline: how a folder (or a manifest) becomes pairs, that a batch
uploads each pair once, follows them to their end, downloads each video, reports every pair, and resumes."""

from __future__ import annotations

import csv
import io
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from avatar_cli.batch import (
    NOT_SENT,
    BatchState,
    BatchView,
    Pair,
    PairRecord,
    pairs_by_stem,
    pairs_from_manifest,
    place_in_line,
    run_batch,
)
from avatar_pipeline.domain.models import JobOptions, S3Object, Task, TaskStatus
from avatar_pipeline.domain.state_machine import begin, transition

S = TaskStatus
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"x")


def test_a_folder_pairs_by_stem_with_masks_and_reports_what_made_no_pair(tmp_path: Path) -> None:
    # Given faces and voices, a mask, a face without a voice, a voice without a face, and a hidden file
    touch(tmp_path, "amy.png", "amy.MP3", "amy.mask.png", "bob.jpg", "bob.wav", "cy.png", "dee.m4a", ".DS_Store")
    # When the folder is read
    pairs, unpaired = pairs_by_stem(tmp_path, JobOptions(model="infinitetalk"))
    # Then amy (with her mask) and bob are pairs, with the command's options; cy and dee are reported
    assert [(p.name, p.image.name, p.audio.name, p.mask and p.mask.name) for p in pairs] == [
        ("amy", "amy.png", "amy.MP3", "amy.mask.png"),
        ("bob", "bob.jpg", "bob.wav", None),
    ]
    assert all(p.options.model == "infinitetalk" for p in pairs)
    assert [(u.name, u.reason) for u in unpaired] == [
        ("cy", "cy.png has no voice clip named cy.*"),
        ("dee", "dee.m4a has no image named dee.*"),
    ]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_manifest_gives_each_pair_its_files_and_options_over_the_commands(tmp_path: Path, kind: str) -> None:
    # Given a manifest naming two pairs, one with options of its own
    rows = [
        {"pair": "intro", "image": "a.png", "audio": "a.mp3"},
        {"pair": "outro", "image": "b.png", "audio": "b.mp3", "model": "kling-v2-pro", "options": {"seed": 7}},
    ]
    manifest = tmp_path / f"manifest.{kind}"
    if kind == "jsonl":
        manifest.write_text("\n".join(json.dumps(row) for row in rows))
    else:
        with manifest.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["pair", "image", "audio", "model", "options"])
            writer.writeheader()
            writer.writerows({**row, "options": json.dumps(row["options"]) if "options" in row else ""} for row in rows)
    # When it is read with the command's defaults (Kling v2 standard)
    pairs = pairs_from_manifest(manifest, tmp_path, JobOptions(model="kling-v2-std"))
    # Then each pair has its files, and a row's own choices win over the command's
    assert [(p.name, p.image, p.audio, p.options.model) for p in pairs] == [
        ("intro", tmp_path / "a.png", tmp_path / "a.mp3", "kling-v2-std"),
        ("outro", tmp_path / "b.png", tmp_path / "b.mp3", "kling-v2-pro"),
    ]
    assert (pairs[0].options.options, pairs[1].options.options) == ({}, {"seed": 7})


def test_a_manifest_row_with_a_bad_option_stops_the_batch_naming_the_row(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "a.png", "audio": "a.mp3", "model": "ultra"}))
    with pytest.raises(SystemExit, match=r"m.jsonl, pair 1 \(a\)"):
        pairs_from_manifest(manifest, tmp_path, JobOptions())


@dataclass
class ScriptedPipeline:
    """The client's three calls, scripted: each job's task goes through the statuses given for it, one per look."""

    ends: dict[str, TaskStatus]
    uploads: list[str] = field(default_factory=list)
    looks: dict[str, int] = field(default_factory=dict)
    interrupt_after: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, face: Path, audio: Path, job: str, options: JobOptions, mask: Path | None = None) -> list[str]:
        with self.lock:
            self.uploads.append(job)
        return [f"inbox/{job}/{face.name}", f"inbox/{job}/{audio.name}"]

    def status(self, job: str) -> Any:
        self.looks[job] = self.looks.get(job, 0) + 1
        if self.interrupt_after is not None and sum(self.looks.values()) > self.interrupt_after:
            raise KeyboardInterrupt
        return type("View", (), {"latest": self._task(job, self.looks[job])})()

    def _task(self, job: str, look: int) -> Task:
        task = begin(
            job.replace("/", "-"), job, since=T0, arrived="a", now=T0, provider="wavespeed", model="kling-v1-std"
        )
        if look == 1:  # first look: waiting in line
            return transition(
                task, S.QUEUED, why="paired; Kling v1 AI Avatar (standard), 2nd in line for WaveSpeed (…)", now=T0
            )
        ending = self.ends[job.rsplit("/", 1)[-1]]
        if ending is S.COMPLETED:
            for status in (S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.PROCESSING, S.OUTPUT_READY, S.FINALIZING):
                task = transition(task, status, why=str(status), now=T0)
            video = S3Object(bucket="b", key=f"outputs/{job}/v.mp4")
            task = transition(task, S.COMPLETED, why="done", now=T0, output=video, estimated_cost_usd="0.25")
            return task
        return transition(task, S.REJECTED, why="voice.mp3 lasts 1.0 s; it must last at least 2 s", now=T0)

    def download(self, task: Task, directory: Path) -> Path:
        target = directory / task.job / "v.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"mp4")
        return target


def batch_of(tmp_path: Path, ends: dict[str, TaskStatus]) -> list[Pair]:
    return [Pair(name, tmp_path / f"{name}.png", tmp_path / f"{name}.mp3", JobOptions()) for name in ends]


def test_a_batch_uploads_each_pair_once_follows_them_downloads_the_videos_and_reports_every_pair(
    tmp_path: Path,
) -> None:
    # Given three pairs, one of which the pipeline will reject, and a face that made no pair
    ends = {"amy": S.COMPLETED, "bob": S.COMPLETED, "cy": S.REJECTED}
    pipeline = ScriptedPipeline(ends)
    state = BatchState(batch="clips-1")
    out = tmp_path / "out"
    console = Console(file=io.StringIO(), width=120)
    # When the batch runs
    rows = run_batch(pipeline, batch_of(tmp_path, ends), [], out, state, interval=0, console=console)  # type: ignore[arg-type]
    # Then each pair was uploaded once as <batch>/<pair>, the videos are downloaded, and the report says it all
    assert sorted(pipeline.uploads) == ["clips-1/amy", "clips-1/bob", "clips-1/cy"]
    assert [(r["pair"], r["status"], r["estimated_cost_usd"], bool(r["video"])) for r in rows] == [
        ("amy", "COMPLETED", "0.25", True),
        ("bob", "COMPLETED", "0.25", True),
        ("cy", "REJECTED", "", False),
    ]
    assert "it must last at least 2 s" in rows[2]["reason"]
    with (out / "report.csv").open(newline="") as handle:
        assert list(csv.DictReader(handle)) == rows
    # And the view ends with the counts by state
    assert "COMPLETED  2" in console.file.getvalue()  # type: ignore[attr-defined]


def test_the_view_shows_the_counts_by_state_and_where_waiting_pairs_stand_in_line() -> None:
    # Given two pairs waiting in line and one that has ended
    console = Console(file=io.StringIO(), width=120)
    view = BatchView(console, 3)
    records = {
        "amy": PairRecord(job="b/amy", status="QUEUED"),
        "bob": PairRecord(job="b/bob", status="QUEUED"),
        "cy": PairRecord(job="b/cy", status="COMPLETED"),
    }
    waiting = begin("t", "b/amy", since=T0, arrived="a", now=T0, provider="wavespeed", model="kling-v1-std")
    queued = transition(waiting, S.QUEUED, why="paired; InfiniteTalk, 12th in line for WaveSpeed (3 at once)", now=T0)
    # When it is drawn
    view.update(records, {"amy": place_in_line("amy", queued) or ""})
    console.print(view.live.renderable)
    # Then it shows 1 of 3 ended, the counts, and the place in line of the pair whose place is known
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "1/3" in shown and "QUEUED     2" in shown and "COMPLETED  1" in shown
    assert "amy: #12 at WaveSpeed" in shown


def test_ctrl_c_stops_watching_without_losing_anything_and_the_same_command_resumes(tmp_path: Path) -> None:
    # Given a batch whose watching is interrupted after the first looks (Ctrl-C)
    ends = {"amy": S.COMPLETED, "bob": S.COMPLETED}
    out = tmp_path / "out"
    first = ScriptedPipeline(ends, interrupt_after=2)
    console = Console(file=io.StringIO(), width=120)
    rows = run_batch(first, batch_of(tmp_path, ends), [], out, BatchState(batch="b-1"), interval=0, console=console)  # type: ignore[arg-type]
    # Then the uploads are done and remembered, the report says where each stands, and the way to resume is shown
    assert sorted(first.uploads) == ["b-1/amy", "b-1/bob"] and {r["status"] for r in rows} == {"QUEUED"}
    assert "run the same command again to resume" in console.file.getvalue()  # type: ignore[attr-defined]
    # When the same batch runs again, from its saved state
    again = ScriptedPipeline(ends)
    again.looks = {"b-1/amy": 1, "b-1/bob": 1}
    resumed = BatchState.load_or_start(out, tmp_path)
    rows = run_batch(again, batch_of(tmp_path, ends), [], out, resumed, interval=0, console=console)  # type: ignore[arg-type]
    # Then nothing is uploaded twice, and it ends with both videos
    assert resumed.batch == "b-1" and again.uploads == []
    assert [(r["status"], bool(r["video"])) for r in rows] == [("COMPLETED", True), ("COMPLETED", True)]


def test_files_that_made_no_pair_are_in_the_report_as_not_sent(tmp_path: Path) -> None:
    from avatar_cli.batch import Unpaired

    pipeline = ScriptedPipeline({"amy": S.COMPLETED})
    rows = run_batch(
        pipeline,  # type: ignore[arg-type]
        batch_of(tmp_path, {"amy": S.COMPLETED}),
        [Unpaired("cy", "cy.png has no voice clip named cy.*")],
        tmp_path / "out",
        BatchState(batch="b"),
        interval=0,
        console=Console(file=io.StringIO()),
    )
    assert [(r["pair"], r["status"], r["reason"], r["job"]) for r in rows][1] == (
        "cy",
        NOT_SENT,
        "cy.png has no voice clip named cy.*",
        "",
    )
    assert pipeline.uploads == ["b/amy"]

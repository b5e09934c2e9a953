"""`avatar batch DIR`: a folder of faces and voices (paired by stem, or by a manifest) as one batch of jobs.

Each pair is uploaded as the job `<batch>/<pair>` (a folder job, with its own job.json), a few at a time; the
batch is then watched until every job has ended, with a bar and the counts by state (and each waiting pair's place
in its provider's line), and every video is downloaded. A report (CSV: pair, job, status, reason, cost, video) is
written at the end. The batch remembers what it did in its output folder (`batch.json`): Ctrl-C stops watching and
loses nothing (the jobs run on), and running the same command again uploads nothing twice, watches what is left
and downloads what is new.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from avatar_cli.client import PipelineClient
from avatar_pipeline.domain.models import JobOptions, Task, TaskStatus
from avatar_pipeline.domain.pairing import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, MASK_SUFFIXES

STATE_FILE = "batch.json"
REPORT_FILE = "report.csv"
REPORT_COLUMNS = ("pair", "job", "status", "reason", "estimated_cost_usd", "video")
# Not a task status: a file of the folder that made no pair, so was not sent.
NOT_SENT = "NOT SENT"
PLACE_IN_LINE = re.compile(r"(\d+)(?:st|nd|rd|th) in line for ([^(;]+?) \(")


@dataclass(frozen=True)
class Pair:
    name: str
    image: Path
    audio: Path
    options: JobOptions
    mask: Path | None = None


@dataclass(frozen=True)
class Unpaired:
    name: str
    reason: str


class PairRecord(BaseModel):
    job: str
    uploaded: bool = False
    status: str = "UPLOADING"
    reason: str = ""
    estimated_cost_usd: str = ""
    video: str = ""


class BatchState(BaseModel):
    """What a batch did so far, kept in its output folder: a second run resumes from it."""

    batch: str
    pairs: dict[str, PairRecord] = Field(default_factory=dict)

    @classmethod
    def load_or_start(cls, out: Path, source: Path) -> BatchState:
        path = out / STATE_FILE
        if path.exists():
            return cls.model_validate_json(path.read_text())
        return cls(batch=f"{_job_safe(source.resolve().name)}-{datetime.now(UTC):%Y%m%d-%H%M%S}")

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        temporary = out / f"{STATE_FILE}.tmp"
        temporary.write_text(self.model_dump_json(indent=2))
        temporary.replace(out / STATE_FILE)  # never a half-written state, even if interrupted


def _job_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "batch"


# ------------------------------------------------------------------------------------------------ the pairs


def pairs_by_stem(directory: Path, defaults: JobOptions) -> tuple[list[Pair], list[Unpaired]]:
    """The folder's images and voices with the same stem (`alice.png` + `alice.mp3`; `alice.mask.png` as its mask),
    and the files that made no pair."""
    images: dict[str, Path] = {}
    voices: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    unpaired: list[Unpaired] = []
    for path in sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")):
        lower = path.name.lower()
        if lower.endswith(MASK_SUFFIXES):
            masks[path.name[: -len(next(s for s in MASK_SUFFIXES if lower.endswith(s)))]] = path
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            images[path.stem] = path
        elif path.suffix.lower() in AUDIO_EXTENSIONS:
            voices[path.stem] = path
    for stem in sorted(images.keys() | voices.keys()):
        if stem not in voices:
            unpaired.append(Unpaired(stem, f"{images[stem].name} has no voice clip named {stem}.*"))
        elif stem not in images:
            unpaired.append(Unpaired(stem, f"{voices[stem].name} has no image named {stem}.*"))
    both = sorted(images.keys() & voices.keys())
    found = [Pair(stem, images[stem], voices[stem], defaults, masks.get(stem)) for stem in both]
    return found, unpaired


def pairs_from_manifest(manifest: Path, directory: Path, defaults: JobOptions) -> list[Pair]:
    """A CSV (columns: pair, image, audio, and any job.json field: model, prompt, provider; options and metadata as
    JSON) or JSONL (one object per pair, the same fields) manifest; file paths are relative to the folder. A row's
    fields override the command's."""
    if manifest.suffix.lower() == ".jsonl":
        rows: Iterable[dict[str, Any]] = (
            json.loads(line) for line in manifest.read_text().splitlines() if line.strip()
        )
    else:
        with manifest.open(newline="") as handle:
            rows = [
                {
                    k: json.loads(v) if k in ("options", "metadata", "providers") and v else v
                    for k, v in row.items()
                    if v
                }
                for row in csv.DictReader(handle)
            ]
    pairs = []
    for number, row in enumerate(rows, start=1):
        image, audio = directory / str(row.pop("image")), directory / str(row.pop("audio"))
        name = _job_safe(str(row.pop("pair", "") or image.stem))
        mask = directory / str(row.pop("mask")) if row.get("mask") else None
        try:
            options = JobOptions.model_validate({**defaults.model_dump(exclude_defaults=True), **row})
        except ValidationError as error:
            raise SystemExit(f"{manifest.name}, pair {number} ({name}): {error}") from None
        pairs.append(Pair(name, image, audio, options, mask))
    return pairs


# ------------------------------------------------------------------------------------------------ running it


class BatchView:
    """The live display: a bar of the pairs that have ended, and the counts by state."""

    def __init__(self, console: Console, total: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        )
        self.bar = self.progress.add_task("ended", total=total)
        self.live = Live(console=console, refresh_per_second=4, transient=False)

    def update(self, records: dict[str, PairRecord], places: dict[str, str]) -> None:
        counts = Counter(record.status for record in records.values())
        ended = sum(n for status, n in counts.items() if status in _ENDED)
        self.progress.update(self.bar, completed=ended)
        table = Table.grid(padding=(0, 2))
        for status, count in sorted(counts.items()):
            waiting = [places[name] for name, r in records.items() if r.status == status and name in places]
            table.add_row(status, str(count), ", ".join(waiting[:3]) + (" …" if len(waiting) > 3 else ""))
        self.live.update(Group(self.progress, table))


_ENDED = {status.value for status in TaskStatus if status.is_terminal} | {NOT_SENT}


def run_batch(
    client: PipelineClient,
    pairs: list[Pair],
    unpaired: list[Unpaired],
    out: Path,
    state: BatchState,
    *,
    concurrency: int = 4,
    timeout: float = 3600,
    interval: float = 2.0,
    console: Console | None = None,
) -> list[dict[str, str]]:
    """Upload what is not uploaded yet, watch every job until it ends (or `timeout`), download each video, and write
    the report; returns its rows. Ctrl-C stops watching: the state is kept, and the same command resumes."""
    console = console or Console()
    for pair in pairs:
        state.pairs.setdefault(pair.name, PairRecord(job=f"{state.batch}/{pair.name}"))
    for item in unpaired:
        state.pairs[item.name] = PairRecord(job="", status=NOT_SENT, reason=item.reason)
    state.save(out)
    view = BatchView(console, len(state.pairs))
    try:
        with view.live:
            _upload(client, [p for p in pairs if not state.pairs[p.name].uploaded], state, out, concurrency)
            watch(client, state, out / "videos", timeout, interval, view.update, save=lambda: state.save(out))
    except KeyboardInterrupt:
        console.print(f"stopped watching; nothing is lost: run the same command again to resume ({out / STATE_FILE})")
    finally:
        state.save(out)
    return write_report(state, out / REPORT_FILE)


def _upload(client: PipelineClient, pairs: list[Pair], state: BatchState, out: Path, concurrency: int) -> None:
    def send(pair: Pair) -> None:
        record = state.pairs[pair.name]
        client.submit(pair.image, pair.audio, record.job, pair.options, pair.mask)
        record.uploaded, record.status = True, "UPLOADED"

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for future in [pool.submit(send, pair) for pair in pairs]:
            future.result()
            state.save(out)


def watch(
    client: PipelineClient,
    state: BatchState,
    videos: Path,
    timeout: float,
    interval: float,
    show: Callable[[dict[str, PairRecord], dict[str, str]], None],
    save: Callable[[], None] = lambda: None,
) -> None:
    """Follow the state's jobs until every one has ended, downloading each video into `videos` as it is ready."""
    deadline = time.monotonic() + timeout
    while True:
        places: dict[str, str] = {}
        for name, record in state.pairs.items():
            if record.status in _ENDED and (record.video or record.status != TaskStatus.COMPLETED):
                continue
            task = client.status(record.job).latest
            if task is None:
                continue
            _record(record, task)
            if place := place_in_line(name, task):
                places[name] = place
            if task.status is TaskStatus.COMPLETED and not record.video:
                record.video = str(client.download(task, videos))
        save()
        show(state.pairs, places)
        if all(r.status in _ENDED for r in state.pairs.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the batch did not end within {timeout:.0f} s; run the same command again to resume")
        time.sleep(interval)


def place_in_line(name: str, task: Task) -> str | None:
    """ "amy: #3 at WaveSpeed" for a pair waiting in its provider's line (its task's reason says where)."""
    found = PLACE_IN_LINE.search(task.reason or "") if task.status is TaskStatus.QUEUED else None
    return f"{name}: #{found.group(1)} at {found.group(2)}" if found else None


def _record(record: PairRecord, task: Task) -> None:
    record.status = task.status.value
    record.reason = "" if task.status is TaskStatus.COMPLETED else task.reason or ""
    record.estimated_cost_usd = task.estimated_cost_usd or ""


def write_report(state: BatchState, path: Path) -> list[dict[str, str]]:
    rows = [
        {
            "pair": name,
            "job": record.job,
            "status": record.status,
            "reason": record.reason,
            "estimated_cost_usd": record.estimated_cost_usd,
            "video": record.video,
        }
        for name, record in sorted(state.pairs.items())
    ]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows

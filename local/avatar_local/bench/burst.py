"""Burst: many pairs dropped at once through the local stack while the WaveSpeed simulator holds to its documented
limits (submissions per minute, predictions at once), sped up by a time factor.

Every pair must reach the provider exactly once and none may fail because the provider said 429; the rate at which
pairs get through submit is compared with the provider's own limit (its 5 per minute, times the time factor): the
most any client could get through.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from avatar_local.bench.common import Figure, Section

SUBMISSIONS_PER_MINUTE = 5
MAX_CONCURRENT = 3
# Local timings within the template's limits: no failover (every pair is WaveSpeed's to take), the poller asks about
# quiet tasks only after 10 minutes (a burst is about submissions), tasks may take an hour.
PARAMETERS = {
    "AllowFailover": "false",
    "PollAfterSeconds": "600",
    "MaxPairWaitSeconds": "600",
    "MaxProviderQueueSeconds": "3600",
    "MaxRenderSeconds": "3600",
}
# Long enough that hardly a video finishes during the burst: the figures are submit's, and the simulator's renders do
# not crowd this machine.
PROCESSING_SECONDS = 3600.0


def _task_items(stack: Any, table: str) -> list[dict[str, Any]]:
    client = stack.aws.client("dynamodb")
    items: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(TableName=table):
        items.extend(page.get("Items", []))
    return [
        {key: next(iter(value.values())) for key, value in item.items() if key in ("pk", "status", "reason", "job")}
        for item in items
        if item["pk"]["S"].startswith("TASK#")
    ]


def _drop(bucket: str, drops: list[Any], media: Any) -> None:
    """Both halves of every pair, written straight into the embedded S3's store: its notifications go out as for any
    upload, without 2,000 HTTP requests queueing in the same process as everything they set off."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for drop in drops:
        keys = drop.keys()
        backend.put_object(bucket, keys["image"], media.face)
        backend.put_object(bucket, keys["audio"], media.voice)


def measure(
    pairs: int, time_factor: float, workdir: Path, say: Callable[[str], None], *, timeout: float = 420.0
) -> Section:
    from avatar_local.chaos import Drop, Media
    from avatar_local.simulators.faults import FaultPlan
    from avatar_local.stack import LocalStack, LocalStackConfig

    started = time.monotonic()
    section = Section("burst", "4. Burst")
    limit_per_second = SUBMISSIONS_PER_MINUTE * time_factor / 60
    logging.getLogger("avatar_local").setLevel(logging.ERROR)
    stack = LocalStack(
        LocalStackConfig(
            stack_name="avatar-burst",
            parameters=PARAMETERS,
            faults=FaultPlan(processing_seconds=PROCESSING_SECONDS),
            time_factor=time_factor,
            wavespeed_submissions_per_minute=SUBMISSIONS_PER_MINUTE,
            wavespeed_max_concurrent=MAX_CONCURRENT,
            state_dir=workdir / "burst",
            workers_per_function=4,
        )
    )
    info = stack.start()
    try:
        drops = [Drop(f"burst-{number:05d}", "pair", "wavespeed", "folder", together=False) for number in range(pairs)]
        media = Media()
        say(f"  dropping {pairs} pairs at once…")
        dropped_at = time.monotonic()
        _drop(info.bucket, drops, media)
        uploaded = time.monotonic() - dropped_at
        say(f"  all uploaded after {uploaded:.0f} s; waiting for every pair to reach WaveSpeed…")
        accepted_at: float | None = None
        last_report = time.monotonic()
        while time.monotonic() - dropped_at < timeout:
            count = len(stack.simulator.predictions())
            if count >= pairs:
                accepted_at = time.monotonic()
                break
            if time.monotonic() - last_report > 20:
                last_report = time.monotonic()
                say(f"  {count}/{pairs} submitted after {time.monotonic() - dropped_at:.0f} s")
            time.sleep(1.0)
        time.sleep(5.0)  # anything submitted twice would show by now
        submissions: Counter[str] = Counter()
        for prediction in stack.simulator.predictions():
            query = parse_qs(urlsplit(prediction.get("webhook_url") or "").query)
            submissions[query.get("task_id", ["?"])[0]] += 1
        answers = Counter(request["status"] for request in stack.simulator.submissions())
        tasks = _task_items(stack, info.table)
    finally:
        stack.stop()

    statuses = Counter(task["status"] for task in tasks)
    jobs_with_tasks = Counter(task["job"] for task in tasks)
    task_ids = {task["pk"].removeprefix("TASK#") for task in tasks}
    once = sum(1 for task_id in task_ids if submissions[task_id] == 1)
    duplicates = sum(count - 1 for count in submissions.values() if count > 1)
    failed = [task for task in tasks if task["status"] in ("FAILED", "TIMED_OUT", "REJECTED")]
    failed_429 = sum(
        1 for task in failed if "429" in (task.get("reason") or "") or "rate" in (task.get("reason") or "")
    )
    not_submitted = sum(1 for task in tasks if task["status"] in ("WAITING_FOR_PAIR", "SUBMITTING"))
    elapsed = (accepted_at or time.monotonic()) - dropped_at
    rate = pairs / elapsed if accepted_at else once / elapsed
    (workdir / "burst-statuses.json").write_text(json.dumps({"statuses": statuses, "answers": answers}, default=str))

    section.figures += [
        Figure(
            section.title,
            f"pairs submitted to WaveSpeed exactly once (of {pairs:,})",
            once,
            "pairs",
            1,
            target=f"{pairs:,}",
            met=once == pairs and duplicates == 0 and len(jobs_with_tasks) == pairs,
            note=f"duplicate submissions {duplicates}; jobs with a task {len(jobs_with_tasks)}; "
            f"still not submitted {not_submitted}",
        ),
        Figure(
            section.title,
            "pairs failed because of 429s",
            failed_429,
            "pairs",
            1,
            target="0",
            met=failed_429 == 0 and not failed,
            note=f"WaveSpeed answered {answers.get(429, 0):,} submits with 429 and accepted {answers.get(200, 0):,}; "
            f"tasks failed for any reason: {len(failed)}",
        ),
        Figure(
            section.title,
            "pairs per second through submit",
            rate,
            "pairs/s",
            1,
            baseline=limit_per_second,
            baseline_label=f"WaveSpeed's limit: {SUBMISSIONS_PER_MINUTE}/min \u00d7 {time_factor:g}",
            note=f"{pairs:,} pairs from the first upload to the last acceptance in {elapsed:.0f} s "
            f"(uploading them took {uploaded:.0f} s)",
            decimals=2,
        ),
    ]
    parameters = ", ".join(f"{k}={v}" for k, v in PARAMETERS.items())
    section.method = (
        f"The local stack (template.yaml's four functions, 4 workers each) with the WaveSpeed simulator at its "
        f"documented limits — {SUBMISSIONS_PER_MINUTE} submissions per minute, {MAX_CONCURRENT} predictions "
        f"processing at once — and simulated time {time_factor:g}\u00d7 real time (its limit window is "
        f"{60 / time_factor:.2f} s; a video takes {PROCESSING_SECONDS / 60:g} simulated minutes). Parameters: "
        f"{parameters}. {pairs:,} folder pairs (a 480\u00d7640 PNG and a 2.5 s MP3) written straight into the "
        f"embedded S3's store (its notifications go out as for any upload); counted when every pair's prediction "
        f"exists, plus 5 s: predictions per task (from the webhook URL each names), the simulator's answers to "
        f"submits, every task's status and reason. One burst (it is {pairs:,} pairs in itself)."
    )
    section.seconds = time.monotonic() - started
    return section

"""The chaos run: many pairs through the local stack while AWS, the providers and the network misbehave, then a count
of every kind of harm. Every harm count must be 0.

Faults are decided by random sources seeded from `ChaosConfig.seed` (the mix of pairs, the simulators' fault plans,
the AWS-side fault plan), so a run can be repeated; which request meets which fault also depends on timing.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from avatar_cli.client import PipelineClient, StackTarget
from avatar_local.simulators.faults import FaultPlan
from avatar_local.simulators.media import make_sample_portrait, make_sample_speech
from avatar_local.twin.aws_faults import AwsFaultPlan
from avatar_local.twin.stack import LocalStack, LocalStackConfig, StackInfo
from avatar_pipeline.domain.models import JobOptions, Task, TaskStatus

PairKind = Literal["pair", "half", "bad"]
Provider = Literal["wavespeed", "cometapi"]
Style = Literal["folder", "stem"]
# What each kind of drop must end as. A good pair may also end FAILED or TIMED_OUT when the faults make the provider
# fail it or lose every trace of it — with its reason recorded; never REJECTED.
EXPECTED: dict[PairKind, frozenset[TaskStatus]] = {
    "pair": frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT}),
    "half": frozenset({TaskStatus.TIMED_OUT}),
    "bad": frozenset({TaskStatus.REJECTED}),
}
CLIP_SECONDS = 2.5
SHORT_CLIP_SECONDS = 1.0  # under every provider's 2 s minimum
QUOTA_PER_MINUTE = 120
QUOTA_AT_ONCE = 4
# Local timings, within the template's limits: halves wait 60 s for a partner; a task may take 5 min at the provider
# (in its queue and rendering; a submission whose answer was lost is waited for that long, so it ends within a run).
PARAMETERS = {
    "PollAfterSeconds": "5",
    "MaxPairWaitSeconds": "60",
    "MaxProviderQueueSeconds": "150",
    "MaxRenderSeconds": "150",
    # The quota is on: the simulator holds WaveSpeed to these limits too (higher than its default level, so 200 pairs
    # of 2-second renders take minutes, not the better part of an hour).
    "WaveSpeedSubmissionsPerMinute": str(QUOTA_PER_MINUTE),
    "WaveSpeedRendersAtOnce": str(QUOTA_AT_ONCE),
    "CometApiSubmissionsPerMinute": str(QUOTA_PER_MINUTE),
    "CometApiRendersAtOnce": str(QUOTA_AT_ONCE),
}
# After the last task has ended and been announced, how long to keep listening for late duplicate notifications.
LATE_DUPLICATE_WINDOW = 10.0


def provider_faults(seed: int) -> FaultPlan:
    """Both simulators' faults: errors and lost answers on submit, errors on status queries, failed jobs, webhooks
    lost, duplicated, delayed and overtaking each other, downloads cut off halfway."""
    return FaultPlan(
        seed=seed,
        submit_error_rate=0.15,
        submit_error_status=429,
        result_error_rate=0.15,
        result_error_status=503,
        lost_answer_rate=0.03,
        fail_rate=0.05,
        lost_webhook_rate=0.15,
        duplicate_webhook_rate=0.2,
        webhook_delay_seconds=0.5,
        webhook_jitter_seconds=4.0,
        truncated_download_rate=0.15,
        processing_seconds=2.0,
    )


def aws_faults(seed: int) -> AwsFaultPlan:
    return AwsFaultPlan(
        seed=seed,
        dynamodb_throttle_rate=0.05,
        sns_publish_error_rate=0.2,
        events_throttle_rate=0.1,
        events_answer_lost_rate=0.1,
        crash_rate=0.1,
        crash_operations=("s3.UploadPart",),
        s3_duplicate_event_rate=0.2,
        s3_event_max_delay_seconds=3.0,
    )


@dataclass(frozen=True)
class ChaosConfig:
    pairs: int = 200
    seed: int = 1
    half_share: float = 0.05
    bad_share: float = 0.05
    cometapi_share: float = 0.3
    stem_share: float = 0.2  # inbox/<job>.png + inbox/<job>.mp3 instead of a folder
    together_share: float = 0.4  # both halves uploaded at the same instant
    drops_per_second: float = 8.0
    # The quota is on: each 429 the simulators inject pauses that provider's line (CometAPI sends no Retry-After, so a
    # whole window), which stretched a 200-pair run to 14 minutes on a busy 2-CPU machine.
    settle_timeout: float = 1800.0
    workers_per_function: int = 2


@dataclass(frozen=True)
class Drop:
    job: str
    kind: PairKind
    provider: Provider
    style: Style
    together: bool

    def keys(self) -> dict[str, str]:
        if self.style == "stem":
            return {"image": f"inbox/{self.job}.png", "audio": f"inbox/{self.job}.mp3"}
        return {"image": f"inbox/{self.job}/face.png", "audio": f"inbox/{self.job}/voice.mp3"}


def plan_drops(config: ChaosConfig) -> list[Drop]:
    rng = random.Random(config.seed)  # noqa: S311 - a test mix, not cryptography
    drops = []
    for number in range(config.pairs):
        roll = rng.random()
        kind: PairKind = (
            "half" if roll < config.half_share else "bad" if roll < config.half_share + config.bad_share else "pair"
        )
        provider: Provider = "cometapi" if rng.random() < config.cometapi_share else "wavespeed"
        # job.json (which picks the provider) only exists for folder jobs.
        style: Style = "folder" if provider == "cometapi" or rng.random() >= config.stem_share else "stem"
        drops.append(
            Drop(f"chaos-{config.seed}-{number:04d}", kind, provider, style, rng.random() < config.together_share)
        )
    return drops


@dataclass
class Media:
    face: bytes = field(default_factory=make_sample_portrait)
    voice: bytes = field(default_factory=lambda: make_sample_speech(CLIP_SECONDS))
    short_voice: bytes = field(default_factory=lambda: make_sample_speech(SHORT_CLIP_SECONDS))


def upload(s3: Any, bucket: str, drop: Drop, media: Media) -> None:
    keys = drop.keys()
    if drop.provider != "wavespeed":
        options = JobOptions(provider=drop.provider).model_dump_json(exclude_none=True)
        s3.put_object(Bucket=bucket, Key=f"inbox/{drop.job}/job.json", Body=options)
    halves = [(keys["image"], media.face), (keys["audio"], media.short_voice if drop.kind == "bad" else media.voice)]
    if drop.kind == "half":
        halves = halves[:1]
    if drop.together and len(halves) == 2:
        start = threading.Barrier(2)

        def put(key: str, body: bytes) -> None:
            start.wait()
            s3.put_object(Bucket=bucket, Key=key, Body=body)

        threads = [threading.Thread(target=put, args=half) for half in halves]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for key, body in halves:
            s3.put_object(Bucket=bucket, Key=key, Body=body)


@dataclass
class Row:
    label: str
    value: int | str
    harm: bool = False


@dataclass
class ChaosReport:
    config: ChaosConfig
    rows: list[Row]
    reasons: Counter[str]  # why the tasks that did not complete ended as they did
    seconds: float

    @property
    def harms(self) -> dict[str, int]:
        return {row.label: int(row.value) for row in self.rows if row.harm}

    @property
    def harmless(self) -> bool:
        return not any(self.harms.values())

    def table(self) -> str:
        width = max(len(row.label) for row in self.rows)
        lines = [f"| {'measure':<{width}} | value | target |", f"|{'-' * (width + 2)}|-------|--------|"]
        for row in self.rows:
            lines.append(f"| {row.label:<{width}} | {row.value!s:>5} | {'0' if row.harm else '':>6} |")
        return "\n".join(lines)


class NotificationLog:
    """Every notification the topic delivered to the stack's test queue, by task id."""

    def __init__(self, stack: LocalStack, info: StackInfo) -> None:
        self._sqs = stack.aws.client("sqs")
        self._queue_url = info.notifications_queue_url
        self.by_task: Counter[str] = Counter()

    def drain(self) -> None:
        while True:
            batch = self._sqs.receive_message(QueueUrl=self._queue_url, MaxNumberOfMessages=10)
            messages = batch.get("Messages", [])
            if not messages:
                return
            for message in messages:
                self.by_task[json.loads(json.loads(message["Body"])["Message"])["task_id"]] += 1
                self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])


class EventLog:
    """Every task state change event the bus delivered to the stack's rule queue: the moves received, by task."""

    def __init__(self, stack: LocalStack, info: StackInfo) -> None:
        self._sqs = stack.aws.client("sqs")
        self._queue_url = info.events_queue_url
        self.sequences: dict[str, set[int]] = {}
        self.received: Counter[str] = Counter()  # by event id: more than 1 is a delivery repeated
        self.ids_of_move: dict[tuple[str, int], set[str]] = {}  # a repeated move must keep its id

    def drain(self) -> None:
        while self._queue_url:
            messages = self._sqs.receive_message(QueueUrl=self._queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return
            for message in messages:
                detail = json.loads(message["Body"])["detail"]
                self.sequences.setdefault(detail["task_id"], set()).add(detail["sequence"])
                self.received[detail["event_id"]] += 1
                self.ids_of_move.setdefault((detail["task_id"], detail["sequence"]), set()).add(detail["event_id"])
                self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])

    def missing(self, task: Task) -> int:
        """How many of the task's moves no event was received for."""
        return len(set(range(1, len(task.history) + 1)) - self.sequences.get(task.task_id, set()))


def run_chaos(config: ChaosConfig, state_dir: Path | None = None, say: Callable[[str], None] = print) -> ChaosReport:
    drops = plan_drops(config)
    stack = LocalStack(
        LocalStackConfig(
            stack_name="avatar-chaos",  # its own resource names, apart from any other local stack in this process
            parameters=PARAMETERS,
            faults=provider_faults(config.seed),
            aws_faults=aws_faults(config.seed),
            state_dir=state_dir,
            workers_per_function=config.workers_per_function,
            poll_interval_seconds=2.0,
            wavespeed_submissions_per_minute=QUOTA_PER_MINUTE,
            wavespeed_max_concurrent=QUOTA_AT_ONCE,
        )
    )
    started = time.monotonic()
    info = stack.start()
    try:
        client = PipelineClient(
            StackTarget(
                bucket=info.bucket, table=info.table, region=info.region, aws_endpoint_url=info.aws_endpoint_url
            )
        )
        notifications = NotificationLog(stack, info)
        events = EventLog(stack, info)
        media = Media()
        s3 = stack.aws.client("s3")
        say(f"dropping {len(drops)} pairs ({_mix(drops)})…")
        with ThreadPoolExecutor(max_workers=8) as uploaders:
            for drop in drops:
                uploaders.submit(upload, s3, info.bucket, drop, media)
                time.sleep(1 / config.drops_per_second)
        say(f"all dropped after {time.monotonic() - started:.0f} s; waiting for every job to end and be announced…")
        outcomes = settle(client, drops, notifications, config.settle_timeout, say)
        time.sleep(LATE_DUPLICATE_WINDOW)
        notifications.drain()
        events.drain()
        rows = _count(stack, info, client, drops, outcomes, notifications, events)
        reasons = Counter(
            f"{task.status.value}: {_generic(task.reason or '')}"
            for tasks in outcomes.values()
            for task in tasks
            if task.status is not TaskStatus.COMPLETED
        )
        return ChaosReport(config, rows, reasons, time.monotonic() - started)
    finally:
        stack.stop()


_SPECIFICS = re.compile(r"inbox/\S+|\b[0-9a-f]{16,}\b|\b\d{12,}\b")


def _generic(reason: str) -> str:
    """A reason without the names and ids that make each one unique, so alike reasons count together."""
    return _SPECIFICS.sub("…", reason)


def _mix(drops: Iterable[Drop]) -> str:
    drops = list(drops)
    kinds = Counter(drop.kind for drop in drops)
    providers = Counter(drop.provider for drop in drops)
    together = sum(drop.together for drop in drops)
    return (
        f"{kinds['pair']} good, {kinds['half']} half, {kinds['bad']} bad; {providers['wavespeed']} WaveSpeed, "
        f"{providers['cometapi']} CometAPI; {together} with both halves at the same instant"
    )


def settle(
    client: PipelineClient,
    drops: list[Drop],
    notifications: NotificationLog,
    timeout: float,
    say: Callable[[str], None],
) -> dict[str, list[Task]]:
    """Wait until every job has a task that ended and was announced; returns each job's tasks as last seen."""
    deadline = time.monotonic() + timeout
    outcomes: dict[str, list[Task]] = {}
    open_jobs = {drop.job for drop in drops}
    last_report = 0.0
    while open_jobs and time.monotonic() < deadline:
        for job in sorted(open_jobs):
            tasks = client.status(job).tasks
            outcomes[job] = tasks
            if tasks and all(task.status.is_terminal and task.notified_at is not None for task in tasks):
                open_jobs.discard(job)
        notifications.drain()
        if time.monotonic() - last_report > 15:
            last_report = time.monotonic()
            states = Counter(task.status.value for tasks in outcomes.values() for task in tasks)
            say(
                f"  {len(drops) - len(open_jobs)}/{len(drops)} jobs ended and announced; {dict(sorted(states.items()))}"
            )
        if open_jobs:
            time.sleep(1.0)
    for job in open_jobs:
        outcomes[job] = client.status(job).tasks
    return outcomes


def _count(
    stack: LocalStack,
    info: StackInfo,
    client: PipelineClient,
    drops: list[Drop],
    outcomes: dict[str, list[Task]],
    notifications: NotificationLog,
    events: EventLog,
) -> list[Row]:
    tasks = [task for job_tasks in outcomes.values() for task in job_tasks]
    statuses = Counter(task.status for task in tasks)
    kind_of = {drop.job: drop.kind for drop in drops}
    s3 = stack.aws.client("s3")

    lost = sum(1 for drop in drops if not any(t.status.is_terminal for t in outcomes.get(drop.job, [])))
    unexpected = sum(1 for task in tasks if task.status.is_terminal and task.status not in EXPECTED[kind_of[task.job]])
    several = sum(1 for drop in drops if len(outcomes.get(drop.job, [])) > 1)
    unexplained = sum(1 for task in tasks for step in task.history if not step.reason)
    submissions = provider_submissions(stack)
    duplicate_submissions = sum(count - 1 for count in submissions.values() if count > 1)
    duplicate_notifications = sum(count - 1 for count in notifications.by_task.values() if count > 1)
    not_once = sum(1 for task in tasks if notifications.by_task[task.task_id] != 1)
    orphaned_uploads = len(s3.list_multipart_uploads(Bucket=info.bucket).get("Uploads", []))
    missing_videos = sum(1 for task in tasks if task.status is TaskStatus.COMPLETED and not is_stored_mp4(s3, task))
    deleted_inputs = _deleted_inputs(s3, info.bucket, drops)

    rows = [
        Row("pairs dropped", len(drops)),
        *(Row(f"tasks ended {status.value}", statuses[status]) for status in _TERMINAL_ORDER),
        Row("tasks still in flight", sum(n for status, n in statuses.items() if not status.is_terminal), harm=True),
        Row("lost pairs (no outcome)", lost, harm=True),
        Row("pairs with more than one task", several, harm=True),
        Row("outcomes not allowed for the drop", unexpected, harm=True),
        Row("transitions without a reason", unexplained, harm=True),
        Row("duplicate provider submissions", duplicate_submissions, harm=True),
        Row("duplicate notifications", duplicate_notifications, harm=True),
        Row("tasks without exactly one notification", not_once, harm=True),
        Row("orphaned multipart uploads", orphaned_uploads, harm=True),
        Row("COMPLETED without a stored MP4", missing_videos, harm=True),
        Row("user uploads deleted", deleted_inputs, harm=True),
        Row("state changes without an event", sum(events.missing(task) for task in tasks), harm=True),
        Row("events received more than once (same id)", sum(n - 1 for n in events.received.values() if n > 1)),
        Row(
            "moves received under more than one id",
            sum(1 for ids in events.ids_of_move.values() if len(ids) > 1),
            harm=True,
        ),
        *_injected(stack),
        *_dead_letters(stack, info),
    ]
    return rows


_TERMINAL_ORDER = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.REJECTED, TaskStatus.TIMED_OUT)


def provider_submissions(stack: LocalStack) -> Counter[str]:
    """Provider jobs created, by our task id (from WaveSpeed's webhook URL, CometAPI's external_task_id)."""
    created: Counter[str] = Counter()
    for prediction in stack.simulator.predictions():
        query = parse_qs(urlsplit(prediction.get("webhook_url") or "").query)
        created[query.get("task_id", ["?"])[0]] += 1
    for task in stack.comet_simulator.tasks():
        created[(task.get("task_info") or {}).get("external_task_id") or "?"] += 1
    return created


def is_stored_mp4(s3: Any, task: Task) -> bool:
    if task.output is None:
        return False
    try:
        head = s3.get_object(Bucket=task.output.bucket, Key=task.output.key, Range="bytes=0-7")["Body"].read()
    except Exception:
        return False
    return bool(head[4:8] == b"ftyp")


def _deleted_inputs(s3: Any, bucket: str, drops: list[Drop]) -> int:
    present: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="inbox/"):
        present.update(item["Key"] for item in page.get("Contents", []))
    expected = [key for drop in drops for role, key in drop.keys().items() if drop.kind != "half" or role == "image"]
    return sum(1 for key in expected if key not in present)


_CHAOS_LINE = re.compile(r"^chaos: (?P<what>.+)$", re.MULTILINE)


def _injected(stack: LocalStack) -> list[Row]:
    """How many of each fault were actually injected, from the simulators' records and the functions' logs."""
    requests = [*stack.simulator.requests(), *stack.comet_simulator.requests()]
    statuses = Counter(request["status"] for request in requests)
    deliveries = [*stack.simulator.webhook_deliveries(), *stack.comet_simulator.callback_deliveries()]
    failed_jobs = [
        *(p for p in stack.simulator.predictions() if "(simulated failure)" in (p.get("error") or "")),
        *(t for t in stack.comet_simulator.tasks() if "(simulated failure)" in (t.get("task_status_msg") or "")),
    ]
    logged: Counter[str] = Counter()
    for log in (stack.config.local_dir / "logs").glob("*.log"):
        for match in _CHAOS_LINE.finditer(log.read_text(errors="replace")):
            logged[match["what"].split(" ", 1)[0]] += 1
    return [
        Row("injected: provider 429/5xx answers", statuses[429] + statuses[503]),
        Row("injected: submits with the answer lost", statuses["lost"]),
        Row("injected: provider jobs failed", len(failed_jobs)),
        Row(
            "injected: downloads cut off",
            stack.simulator.truncated_downloads + stack.comet_simulator.truncated_downloads,
        ),
        Row("injected: webhooks lost", sum(1 for d in deliveries if d.get("lost"))),
        Row(
            "injected: webhooks duplicated", sum(1 for d in deliveries if d.get("duplicate") and d.get("attempt") == 1)
        ),
        Row("injected: DynamoDB throttles", logged["throttled"]),
        Row("injected: SNS publish failures", logged["sns-failed"]),
        Row("injected: PutEvents throttled", logged["events-throttled"]),
        Row("injected: PutEvents answers lost", logged["events-answer-lost"]),
        Row("injected: functions dying mid-copy", logged["crashed"]),
        Row("injected: duplicate S3 events", stack.injected["s3-duplicate"]),
    ]


def _dead_letters(stack: LocalStack, info: StackInfo) -> list[Row]:
    sqs = stack.aws.client("sqs")
    rows = []
    for label, url in (
        ("async failures", info.async_failure_queue_url),
        ("finalize failures", info.finalize_failure_queue_url),
    ):
        if url:
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
            rows.append(Row(f"on-failure queue: {label}", int(attributes["Attributes"]["ApproximateNumberOfMessages"])))
    return rows


def main(argv: list[str], state_dir: Path | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avatar_local chaos", description=__doc__)
    parser.add_argument("--pairs", type=int, default=ChaosConfig.pairs)
    parser.add_argument("--seed", type=int, default=ChaosConfig.seed)
    args = parser.parse_args(argv)
    config = ChaosConfig(pairs=args.pairs, seed=args.seed)
    # Under chaos the local event sources warn about every failed invocation they retry: expected, and counted below.
    logging.getLogger("avatar_local").setLevel(logging.ERROR)
    report = run_chaos(config, state_dir, say=lambda line: print(line, flush=True))
    print(f"\nchaos run: {config.pairs} pairs, seed {config.seed}, {report.seconds:.0f} s\n")
    print(report.table())
    print("\nwhy the tasks that did not complete ended as they did:")
    for reason, count in report.reasons.most_common():
        print(f"  {count:>4}  {reason}")
    print("\nno harm done" if report.harmless else f"\nHARM: {', '.join(k for k, v in report.harms.items() if v)}")
    return 0 if report.harmless else 1

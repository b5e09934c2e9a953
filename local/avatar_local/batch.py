"""The batch run: a folder of pairs larger than the provider account's quota, dropped at once into the local stack.

The WaveSpeed simulator holds to its documented default account level (5 submissions a minute, 3 renders at once,
the rest queued on its side) with renders of a few minutes, and simulated time runs `time_factor` times faster than
ours; the template's own defaults for every duration (and its rate window) are divided by the same factor, so the
pipeline sees the same proportions a deployed stack would. What it proves: every pair becomes a video, each
submitted and paid once, no paid video is lost, the provider is hardly ever answered with a 429 — and the time from
the first upload to the last video stays near the bound the quota itself sets:

    bound = max(pairs / submissions per minute, pairs x render time / renders at once)
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from avatar_cli.client import PipelineClient, StackTarget
from avatar_local.chaos import Drop, Media, NotificationLog, Row, is_stored_mp4, provider_submissions, settle
from avatar_local.simulators.faults import FaultPlan
from avatar_local.twin.stack import LocalStack, LocalStackConfig
from avatar_local.twin.template import load_template
from avatar_pipeline.domain.models import Task, TaskStatus, utcnow

ROOT = Path(__file__).resolve().parents[2]
# The template's durations, each divided by the time factor (the providers' clock runs that much faster).
SCALED_PARAMETERS = (
    "PollAfterSeconds",
    "MaxPairWaitSeconds",
    "MaxProviderQueueSeconds",
    "MaxRenderSeconds",
    "RateWindowSeconds",
    "SpillOverAfterSeconds",
)
# How often the template's schedule runs the poller: rate(1 minute).
POLL_EVERY_SECONDS = 60.0
# The ratio the run must keep to: the last video within 10 % of the quota's bound.
MAX_RATIO = 1.1
MAX_429_SHARE = 0.05


@dataclass(frozen=True)
class BatchConfig:
    pairs: int = 120
    time_factor: float = 20.0
    render_seconds: float = 240.0  # simulated: a Kling avatar render takes minutes
    submissions_per_minute: int = 5
    renders_at_once: int = 3
    workers_per_function: int = 4
    settle_timeout: float = 1800.0

    @property
    def bound_seconds(self) -> float:
        """Simulated seconds the quota itself needs for the batch, however well it is used."""
        by_rate = self.pairs / self.submissions_per_minute * 60
        by_renders = math.ceil(self.pairs / self.renders_at_once) * self.render_seconds
        return max(by_rate, by_renders)


@dataclass
class BatchReport:
    config: BatchConfig
    rows: list[Row]
    ratio: float
    submit_answers: Counter[int]
    path: list[str]  # the statuses a pair passed through
    seconds: float

    @property
    def met(self) -> bool:
        harms = any(int(row.value) for row in self.rows if row.harm)
        return not harms and self.ratio <= MAX_RATIO and self.share_429 < MAX_429_SHARE

    @property
    def share_429(self) -> float:
        total = sum(self.submit_answers.values())
        return self.submit_answers.get(429, 0) / total if total else 0.0

    def table(self) -> str:
        width = max(len(row.label) for row in self.rows)
        lines = [f"| {'measure':<{width}} | {'value':>9} | target |", f"|{'-' * (width + 2)}|-----------|--------|"]
        for row in self.rows:
            target = "0" if row.harm else ""
            lines.append(f"| {row.label:<{width}} | {row.value!s:>9} | {target:>6} |")
        return "\n".join(lines)


def scaled_parameters(time_factor: float, root: Path = ROOT) -> dict[str, str]:
    """The template's own defaults for its durations, divided by `time_factor`; failover off (one provider's quota is
    what is measured)."""
    declared = load_template(root / "template.yaml")["Parameters"]
    scaled = {name: f"{float(declared[name]['Default']) / time_factor:g}" for name in SCALED_PARAMETERS}
    # Whole seconds where the template declares a Number with a whole default (CloudFormation would take 6.0 too).
    scaled = {
        name: str(max(1, round(float(value)))) if name != "RateWindowSeconds" else value
        for name, value in scaled.items()
    }
    return {**scaled, "AllowFailover": "false"}


def _drop(bucket: str, drops: list[Drop], media: Media) -> None:
    """Both halves of every pair straight into the embedded S3's store (its notifications go out as for any upload)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for drop in drops:
        keys = drop.keys()
        backend.put_object(bucket, keys["image"], media.face)
        backend.put_object(bucket, keys["audio"], media.voice)


def run_batch(config: BatchConfig, state_dir: Path | None = None, say: Callable[[str], None] = print) -> BatchReport:
    started = time.monotonic()
    stack = LocalStack(
        LocalStackConfig(
            stack_name="avatar-batch",
            parameters=scaled_parameters(config.time_factor),
            faults=FaultPlan(processing_seconds=config.render_seconds),
            time_factor=config.time_factor,
            wavespeed_submissions_per_minute=config.submissions_per_minute,
            wavespeed_max_concurrent=config.renders_at_once,
            state_dir=state_dir,
            workers_per_function=config.workers_per_function,
            poll_interval_seconds=POLL_EVERY_SECONDS / config.time_factor,
        )
    )
    info = stack.start()
    stack.wait_until_warm()
    try:
        client = PipelineClient(
            StackTarget(
                bucket=info.bucket, table=info.table, region=info.region, aws_endpoint_url=info.aws_endpoint_url
            )
        )
        notifications = NotificationLog(stack, info)
        drops = [
            Drop(f"batch-{number:04d}", "pair", "wavespeed", "folder", together=False) for number in range(config.pairs)
        ]
        first_upload = utcnow()
        _drop(info.bucket, drops, Media())
        say(
            f"dropped {config.pairs} pairs at once; the quota's bound is {config.bound_seconds / 60:g} simulated min"
            f" ({config.bound_seconds / config.time_factor:.0f} s here)"
        )
        outcomes = settle(client, drops, notifications, config.settle_timeout, say)
        time.sleep(2.0)
        notifications.drain()
        rows, last_video = _count(stack, info, drops, outcomes, notifications)
        elapsed = ((last_video or utcnow()) - first_upload).total_seconds() * config.time_factor
        ratio = elapsed / config.bound_seconds
        answers = Counter(int(request["status"]) for request in stack.simulator.submissions())
        rows += [
            Row("first upload to last video (simulated min)", f"{elapsed / 60:.1f}"),
            Row("the quota's bound (simulated min)", f"{config.bound_seconds / 60:.1f}"),
            Row("ratio (target <= 1.1)", f"{ratio:.3f}"),
            Row("submit requests answered 429", answers.get(429, 0)),
            Row("submit requests in all", sum(answers.values())),
        ]
        sample = next((tasks[0] for tasks in outcomes.values() if tasks), None)
        path = [step.to_status.value for step in sample.history] if sample else []
        return BatchReport(config, rows, ratio, answers, path, time.monotonic() - started)
    finally:
        stack.stop()


def _count(
    stack: LocalStack, info: Any, drops: list[Drop], outcomes: dict[str, list[Task]], notifications: NotificationLog
) -> tuple[list[Row], datetime | None]:
    tasks = [task for job_tasks in outcomes.values() for task in job_tasks]
    s3 = stack.aws.client("s3")
    completed = [task for task in tasks if task.status is TaskStatus.COMPLETED and is_stored_mp4(s3, task)]
    submissions = provider_submissions(stack)
    made = {prediction["id"] for prediction in stack.simulator.predictions() if prediction.get("status") == "completed"}
    kept = {task.provider_task_id for task in completed}
    finished = [step.at for task in completed for step in task.history if step.to_status is TaskStatus.COMPLETED]
    rows = [
        Row("pairs dropped", len(drops)),
        Row("tasks COMPLETED with a stored MP4", len(completed)),
        Row("good pairs not COMPLETED", len(drops) - len({task.job for task in completed}), harm=True),
        Row("paid videos lost (made, not stored)", len(made - kept), harm=True),
        Row("duplicate provider submissions", sum(n - 1 for n in submissions.values() if n > 1), harm=True),
        Row(
            "tasks without exactly one notification",
            sum(notifications.by_task[t.task_id] != 1 for t in tasks),
            harm=True,
        ),
        Row(
            "tasks ever TIMED_OUT",
            sum(any(s.to_status is TaskStatus.TIMED_OUT for s in t.history) for t in tasks),
            harm=True,
        ),
    ]
    return rows, max(finished) if finished else None


def main(argv: list[str], state_dir: Path | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avatar_local batch", description=__doc__)
    parser.add_argument("--pairs", type=int, default=BatchConfig.pairs)
    parser.add_argument("--time-factor", type=float, default=BatchConfig.time_factor)
    parser.add_argument("--render-seconds", type=float, default=BatchConfig.render_seconds)
    args = parser.parse_args(argv)
    config = BatchConfig(pairs=args.pairs, time_factor=args.time_factor, render_seconds=args.render_seconds)
    logging.getLogger("avatar_local").setLevel(logging.ERROR)
    report = run_batch(config, state_dir, say=lambda line: print(line, flush=True))
    print(
        f"\nbatch run: {config.pairs} pairs, WaveSpeed at {config.submissions_per_minute}/min and"
        f" {config.renders_at_once} at once, {config.render_seconds / 60:g}-minute renders,"
        f" time {config.time_factor:g}x, {report.seconds:.0f} s\n"
    )
    print(report.table())
    print(f"\na pair's states: {' → '.join(report.path)}")
    print(f"429 share of submit requests: {report.share_429:.1%} (target < {MAX_429_SHARE:.0%})")
    print("all targets met" if report.met else "TARGETS MISSED")
    return 0 if report.met else 1

"""Poller cost: DynamoDB items one poll reads, and how long it takes, with a long history of finished tasks and some
in flight — against the same poll of a table without that history (it must not matter)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from avatar_local.bench.common import Figure, Section, median, run_child

ITEMS_TARGET = 110


def _polls(finished: int, in_flight: int, polls: int) -> dict[str, Any]:
    env = {**os.environ, "POWERTOOLS_SERVICE_NAME": "avatar-pipeline", "POWERTOOLS_LOG_LEVEL": "INFO"}
    args = ["-m", "avatar_local.bench.poll_child", str(finished), str(in_flight), str(polls)]
    return run_child(args, env=env, timeout=600)


def measure(repeats: int, say: Callable[[str], None], *, finished: int = 100_000, in_flight: int = 100) -> Section:
    started = time.monotonic()
    section = Section("poll", "3. Poller cost")
    empty = _polls(0, in_flight, repeats)
    say(f"  poll, no history: {[p['items_read'] for p in empty['polls']]} items read")
    full = _polls(finished, in_flight, repeats)
    say(f"  poll, {finished:,} finished: {[p['items_read'] for p in full['polls']]} items read")

    def items(run: dict[str, Any]) -> float:
        return median([p["items_read"] for p in run["polls"]])

    def millis(run: dict[str, Any]) -> float:
        return median([p["seconds"] * 1000 for p in run["polls"]])

    last = full["polls"][-1]
    detail = ", ".join(f"{name} {count}" for name, count in {**last["reads"]}.items())
    writes = ", ".join(f"{name} {count}" for name, count in last["writes"].items())
    value = items(full)
    section.figures.append(
        Figure(
            section.title,
            f"DynamoDB items read per poll ({finished:,} finished, {in_flight} in flight and due)",
            value,
            "items",
            repeats,
            baseline=items(empty),
            baseline_label="the same poll without the finished tasks",
            target=f"≤ {ITEMS_TARGET}",
            met=value <= ITEMS_TARGET,
            note=f"reads: {detail}; writes: {writes}",
        )
    )
    section.figures.append(
        Figure(
            section.title,
            "wall time per poll",
            millis(full),
            "ms",
            repeats,
            baseline=millis(empty),
            baseline_label="the same poll without the finished tasks",
            note="moto answers a GSI query by walking every item of the table, DynamoDB does not: the difference "
            "is moto's",
        )
    )
    section.method = (
        f"template.yaml's TaskTable in moto (in-process). {finished:,} COMPLETED, announced tasks written by the real "
        f"repository (the first through the API, the rest cloned inside moto), {in_flight} tasks PROCESSING at "
        f"WaveSpeed and due. Each poll is `services.tracking.poll` over the real `DynamoTaskRepository`, the provider "
        f'answering every status query with "processing"; the tasks in flight are made due again before each. '
        f"Items read: Query `ScannedCount` + one per GetItem (+ batch/transactional gets), counted from the responses. "
        f"{repeats} polls each, the table without history filled first."
    )
    section.seconds = time.monotonic() - started
    return section

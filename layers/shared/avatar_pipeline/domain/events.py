"""A task's state changes as events for app backends (EventBridge), one per move in its history.

Each move of a task (a `Transition` in its history) is one event, in the task's order, whatever write made it: a
write that made two moves at once (a pair rejected as it was cut) is two events. An event's id is the task's id and
the move's place in its history, so every delivery of the same move (a retried batch, a replayed stream record)
carries the same id, and consumers drop the repeats.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from avatar_pipeline.domain.models import Task, TaskStatus
from avatar_pipeline.providers.registry import describe_model

# Who says it, in reverse-DNS form as EventBridge's conventions ask (AWS's own services use "aws.<service>").
EVENT_SOURCE = "org.avatar-pipeline.tasks"
DETAIL_TYPE = "Avatar Task State Change"


class TaskStateChange(BaseModel):
    """The `detail` of an "Avatar Task State Change" event."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal["1"] = "1"
    # "<task id>:<sequence>": the same on every delivery of that move.
    event_id: str
    # The move's place in the task's history (1 is its first). EventBridge keeps no order between events, so a
    # consumer orders a task's events by it (and drops one older than the last it has seen).
    sequence: int
    job: str
    task_id: str
    status: TaskStatus
    previous_status: TaskStatus | None
    reason: str
    provider: str
    model: str
    # As people read it, with its resolution: "InfiniteTalk at 720p".
    model_title: str
    estimated_cost_usd: str | None
    # Role ("image", "audio", "mask") → its S3 URI.
    inputs: dict[str, str]
    # The video's S3 URI, once COMPLETED.
    output: str | None
    # The app's own keys and values from job.json's `metadata`, echoed back.
    metadata: dict[str, str] = Field(default_factory=dict)
    # When the task began (its first file arrived) and when this move happened (UTC).
    created_at: datetime
    changed_at: datetime


def state_changes(before: Task | None, after: Task) -> list[TaskStateChange]:
    """The moves `after` made since `before` (None: a new task), oldest first, as events."""
    seen = len(before.history) if before is not None and before.task_id == after.task_id else 0
    inputs = {
        role: obj.uri for role, obj in (("image", after.image), ("audio", after.audio), ("mask", after.mask)) if obj
    }
    return [
        TaskStateChange(
            event_id=f"{after.task_id}:{number}",
            sequence=number,
            job=after.job,
            task_id=after.task_id,
            status=move.to_status,
            previous_status=move.from_status,
            reason=move.reason,
            provider=after.provider,
            model=after.model,
            model_title=describe_model(after.provider, after.model, after.options),
            estimated_cost_usd=after.estimated_cost_usd,
            inputs=inputs,
            output=after.output.uri if after.output and move.to_status is TaskStatus.COMPLETED else None,
            metadata=after.metadata,
            created_at=after.created_at,
            changed_at=move.at,
        )
        for number, move in enumerate(after.history[seen:], start=seen + 1)
    ]


def event_schema() -> dict[str, object]:
    """The JSON Schema of a whole event as EventBridge delivers it to a rule's target (its envelope and its
    `detail`): the contract the repo's schemas/ file holds."""
    detail = TaskStateChange.model_json_schema()
    definitions = detail.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": DETAIL_TYPE,
        "type": "object",
        "required": ["version", "id", "detail-type", "source", "time", "region", "resources", "detail"],
        "properties": {
            "version": {"type": "string"},
            # EventBridge's id of this delivery; the move's own is detail.event_id.
            "id": {"type": "string"},
            "detail-type": {"const": DETAIL_TYPE},
            "source": {"const": EVENT_SOURCE},
            "account": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "region": {"type": "string"},
            "resources": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "detail": detail,
        },
        "$defs": definitions,
    }

"""A task table change as the task's state change events: what the events function does with each stream record."""

from __future__ import annotations

from avatar_pipeline.domain.events import state_changes
from avatar_pipeline.domain.models import Task
from avatar_pipeline.ports import EventPublisher


def publish_moves(publisher: EventPublisher, before: Task | None, after: Task | None) -> int:
    """Put the moves `after` made since `before` on the bus, in order; how many. A task removed (its time to live
    ran out) made none."""
    if after is None:
        return 0
    changes = state_changes(before, after)
    if changes:
        publisher.publish(changes)
    return len(changes)

"""Usage and outcome metrics as CloudWatch embedded metric format lines (Powertools)."""

from __future__ import annotations

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from avatar_pipeline.domain.models import TaskOutcome, TaskStatus

# One plain count per ending (alarms and dashboards need no dimension beyond the service's).
OUTCOME_METRICS = {
    TaskStatus.COMPLETED: "TaskCompleted",
    TaskStatus.FAILED: "TaskFailed",
    TaskStatus.REJECTED: "TaskRejected",
    TaskStatus.TIMED_OUT: "TaskTimedOut",
}


class EmfUsageMeter:
    """Implements `ports.UsageMeter`.

    Per accepted task, whichever function made the submission (submit, or the poller retrying it): `Submissions` and
    `EstimatedCostUsd` by `provider`. Per ended task, when it is announced: `TaskCompleted` / `TaskFailed` /
    `TaskRejected` / `TaskTimedOut`, the same count by `stage` (where it ended: pairing, input, submission, provider,
    copy, done), `EndToEndSeconds` of completed tasks, and `ProviderSeconds` by `provider`.
    """

    def record_submission(self, provider: str, estimated_cost_usd: str | None) -> None:
        _emit("Submissions", MetricUnit.Count, 1, provider=provider)
        if estimated_cost_usd is not None:
            _emit("EstimatedCostUsd", MetricUnit.NoUnit, float(estimated_cost_usd), provider=provider)

    def record_spend_limit_reached(self, provider: str) -> None:
        # Plain (for the spend limit alarm) and by provider.
        _emit("AdmissionBlockedBySpendLimit", MetricUnit.Count, 1)
        _emit("AdmissionBlockedBySpendLimit", MetricUnit.Count, 1, provider=provider)

    def record_outcome(self, outcome: TaskOutcome) -> None:
        name = OUTCOME_METRICS[outcome.status]
        _emit(name, MetricUnit.Count, 1)
        _emit(name, MetricUnit.Count, 1, stage=outcome.stage)
        if outcome.status is TaskStatus.COMPLETED:
            _emit("EndToEndSeconds", MetricUnit.Seconds, outcome.end_to_end_seconds)
        if outcome.provider_seconds is not None:
            _emit("ProviderSeconds", MetricUnit.Seconds, outcome.provider_seconds, provider=outcome.provider)


def _emit(name: str, unit: MetricUnit, value: float, **dimensions: str) -> None:
    """One EMF line now (besides the service dimension Powertools adds), whatever the handler flushes."""
    with single_metric(name=name, unit=unit, value=value) as metric:
        for key, dimension in dimensions.items():
            metric.add_dimension(name=key, value=dimension)

"""Usage metrics as CloudWatch embedded metric format lines (Powertools), per provider."""

from __future__ import annotations

from aws_lambda_powertools.metrics import MetricUnit, single_metric


class EmfUsageMeter:
    """Implements `ports.UsageMeter`: one `Submissions` and one `EstimatedCostUsd` metric per accepted task, with a
    `provider` dimension, whichever function made the submission (submit, or the poller retrying it)."""

    def record_submission(self, provider: str, estimated_cost_usd: str | None) -> None:
        with single_metric(name="Submissions", unit=MetricUnit.Count, value=1) as metric:
            metric.add_dimension(name="provider", value=provider)
        if estimated_cost_usd is not None:
            with single_metric(
                name="EstimatedCostUsd", unit=MetricUnit.NoUnit, value=float(estimated_cost_usd)
            ) as metric:
                metric.add_dimension(name="provider", value=provider)

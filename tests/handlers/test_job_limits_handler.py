"""The submit function under the operator's limits on what job.json may choose, set in its environment as the stack's
parameters set them: a pair asking for more is rejected and WaveSpeed is never called."""

from __future__ import annotations

import json
import re

import pytest
import respx
from handlers.helpers import MP3_BYTES, PNG_BYTES, TaskStream, deliver_upload, mock_wavespeed_submit, upload
from support.aws import Stack

from avatar_pipeline import wiring
from avatar_pipeline.domain.models import TaskStatus
from avatar_pipeline.wiring import pipeline


@pytest.mark.parametrize(
    ("environment", "options", "reason"),
    [
        (
            {"ALLOWED_MODELS": "kling-v1-std"},
            {"mode": "pro"},
            r'job\.json asks for model "kling-v1-pro", which this stack does not allow \(AllowedModels: kling-v1-std\)',
        ),
        (
            {"MAX_COST_PER_PAIR_USD": "0.01"},
            {},
            r"its estimated cost of \$\d+\.\d\d is more than the per-pair cost limit of \$0\.01 \(MaxCostPerPairUsd\)",
        ),
    ],
    ids=["model-not-allowed", "over-the-per-pair-cost-limit"],
)
def test_a_pair_beyond_the_operators_limits_is_rejected_without_a_provider_call(
    stack: Stack,
    provider_http: respx.MockRouter,
    task_stream: TaskStream,
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    options: dict[str, str],
    reason: str,
) -> None:
    # Given the stack's limits in the functions' environment, and WaveSpeed would accept submissions
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    wiring.pipeline.cache_clear()
    submit = mock_wavespeed_submit(provider_http)
    upload(stack, "inbox/kim/job.json", json.dumps(options).encode())
    # When the pair arrives
    deliver_upload(stack, "inbox/kim/face.png", PNG_BYTES)
    result = deliver_upload(stack, "inbox/kim/voice.mp3", MP3_BYTES)
    # Then it is REJECTED with the reason, never joins the line, and WaveSpeed is never called
    assert result["results"][0]["action"] == "rejected"
    task = pipeline().tasks.get(result["results"][0]["task_id"])
    assert task is not None and task.status is TaskStatus.REJECTED
    assert re.fullmatch(reason, task.reason or ""), task.reason
    assert task_stream.settle() == []
    assert submit.call_count == 0

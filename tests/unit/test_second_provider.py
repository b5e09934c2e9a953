"""Choosing a provider per job, failing over, CometAPI's token-authenticated callbacks, and cost estimates."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from support.fakes import (
    BUCKET,
    T0,
    ScriptedProvider,
    World,
    callback_query,
    make_settings,
    make_world,
    run_dispatcher,
    upload,
)

from avatar_pipeline.domain.errors import CallbackMismatchError, ProviderTransientError, WebhookAuthError
from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus, ProviderName, TaskStatus
from avatar_pipeline.domain.pricing import estimate_cost
from avatar_pipeline.services.admission import DispatchReport, dispatch
from avatar_pipeline.services.intake import handle_upload
from avatar_pipeline.services.tracking import receive_callback

IMAGE = upload("inbox/zoe/face.png", etag="img-1", size=200_000)
AUDIO = upload("inbox/zoe/voice.mp3", etag="aud-1", size=300_000)


@pytest.fixture
def two() -> tuple[World, ScriptedProvider, ScriptedProvider]:
    wavespeed = ScriptedProvider()
    comet = ScriptedProvider("cometapi", "query")
    world = make_world(provider=wavespeed, providers={"wavespeed": wavespeed, "cometapi": comet})
    return world, wavespeed, comet


def queue_pair(w: World, options: dict | None = None) -> str:
    """The pair is checked and waits in its provider's line."""
    if options is not None:
        w.media.put_object(BUCKET, "inbox/zoe/job.json", json.dumps(options))
    handle_upload(w.ctx, IMAGE)
    outcome = handle_upload(w.ctx, AUDIO)
    assert outcome.action == "queued"
    assert outcome.task_id is not None
    return outcome.task_id


def send_next(w: World, provider: ProviderName) -> DispatchReport:
    return dispatch(w.ctx, provider, lambda: timedelta(minutes=5))


def submit_pair(w: World, options: dict | None = None) -> str:
    """The pair is checked, joins its provider's line, and the dispatcher sends it (on the table's stream)."""
    task_id = queue_pair(w, options)
    run_dispatcher(w)
    return task_id


def test_job_json_chooses_cometapi_and_its_callback_url_carries_the_tasks_token(two) -> None:
    w, wavespeed, comet = two
    # When a job asks for CometAPI
    task_id = queue_pair(w, {"provider": "cometapi", "mode": "pro"})
    # Then it waits in CometAPI's line
    assert (w.tasks.line("wavespeed"), w.tasks.line("cometapi")) == ([], [task_id])
    # When the dispatcher sends it
    assert run_dispatcher(w) == {"submit-submitted": 1}
    # Then only CometAPI got it, with a callback URL naming the task and the token derived for it
    task = w.tasks.get(task_id)
    assert task is not None and task.provider == "cometapi"
    assert (wavespeed.submit_count, comet.submit_count) == (0, 1)
    token = callback_query("cometapi", task_id)["token"]
    assert (
        comet.submissions[0].webhook_url
        == f"https://hooks.example.test/v1/webhooks/cometapi?task_id={task_id}&token={token}"
    )


def test_turned_away_submission_fails_over_once_and_never_reaches_both(two) -> None:
    w, wavespeed, comet = two
    # Given WaveSpeed turns the task away (rate limited: not taken)
    wavespeed.script_submit(ProviderTransientError("HTTP 429", code="429", retry_after=30))
    task_id = queue_pair(w)
    # When WaveSpeed's line is moved
    report = send_next(w, "wavespeed")
    # Then the task is in CometAPI's line (at its own place: it joined the lines when it was cut), re-estimated at
    # CometAPI's price, and WaveSpeed's line pauses as WaveSpeed asked
    assert report.actions == {"submit-requeued": 1}
    task = w.tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.QUEUED
    assert (task.provider, task.failed_over_from) == ("cometapi", "wavespeed")
    assert task.queued_at == T0
    assert task.estimated_cost_usd == "0.30"
    assert task.reason == "WaveSpeed is unavailable (HTTP 429); failing over to CometAPI"
    assert (w.tasks.line("wavespeed"), w.tasks.line("cometapi")) == ([], [task_id])
    wavespeed_quota = w.tasks.get_quota("wavespeed")
    assert wavespeed_quota is not None and wavespeed_quota.holders == {}
    assert wavespeed_quota.paused_until == T0 + timedelta(seconds=30)
    # When the dispatcher sees it join CometAPI's line
    assert run_dispatcher(w) == {"submit-submitted": 1}
    # Then CometAPI took it; WaveSpeed has nothing to bill
    task = w.tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.SUBMITTED and task.provider == "cometapi"
    assert (wavespeed.submit_count, comet.submit_count) == (1, 1)
    assert w.tasks.holders("cometapi") == {task_id}
    assert w.meter.submissions == [("cometapi", "0.30")]
    # and when WaveSpeed's pause is over and its line moves again, nothing more is sent anywhere
    w.clock.advance(30)
    assert send_next(w, "wavespeed").actions == {}
    assert (wavespeed.submit_count, comet.submit_count) == (1, 1)


def test_a_task_fails_over_once_then_waits_in_the_other_providers_line(two) -> None:
    w, wavespeed, comet = two
    # Given both providers turn the task away
    wavespeed.script_submit(ProviderTransientError("HTTP 503"))
    comet.script_submit(
        ProviderTransientError("HTTP 503"), ProviderJob(provider_task_id="c-1", status=ProviderJobStatus.QUEUED)
    )
    task_id = queue_pair(w)
    # When both lines move
    assert send_next(w, "wavespeed").actions == {"submit-requeued": 1}
    assert send_next(w, "cometapi").actions == {"submit-requeued": 1}
    # Then the task waits in CometAPI's line: it never goes back to WaveSpeed
    task = w.tasks.get(task_id)
    assert task is not None and (task.status, task.provider) == (TaskStatus.QUEUED, "cometapi")
    assert task.reason is not None and task.reason.startswith("CometAPI turned it away (HTTP 503); back to its place")
    assert (w.tasks.line("wavespeed"), w.tasks.line("cometapi")) == ([], [task_id])
    # and CometAPI sends it when its pause is over
    w.clock.advance(w.ctx.settings.rate_window_seconds)
    assert send_next(w, "cometapi").actions == {"submit-submitted": 1}
    assert (wavespeed.submit_count, comet.submit_count) == (1, 2)


def test_no_failover_when_the_job_forbids_it(two) -> None:
    w, wavespeed, comet = two
    wavespeed.script_submit(ProviderTransientError("HTTP 503"))
    task_id = submit_pair(w, {"failover": False})
    task = w.tasks.get(task_id)
    assert task is not None and (task.status, task.provider) == (TaskStatus.QUEUED, "wavespeed")
    assert w.tasks.line("wavespeed") == [task_id]
    assert comet.submit_count == 0


def test_cometapi_callback_with_a_wrong_token_is_refused_and_a_right_one_is_confirmed_by_a_query(two) -> None:
    w, _, comet = two
    task_id = submit_pair(w, {"provider": "cometapi"})
    task = w.tasks.get(task_id)
    assert task is not None and task.provider_task_id is not None
    hint = ProviderJob(provider_task_id=task.provider_task_id, status=ProviderJobStatus.SUCCEEDED, output_url="x")
    comet.script_callback(hint)
    # When a callback comes with a wrong token
    with pytest.raises(WebhookAuthError):
        receive_callback(w.ctx, "cometapi", task_id, {}, b"{}", {"token": "guess"})
    # Then nothing changed
    assert w.tasks.get(task_id).status is TaskStatus.SUBMITTED  # type: ignore[union-attr]
    # When the right token comes, but the provider's own answer says it is still processing
    comet.script_fetch(ProviderJob(provider_task_id=task.provider_task_id, status=ProviderJobStatus.PROCESSING))
    action = receive_callback(w.ctx, "cometapi", task_id, {}, b"{}", callback_query("cometapi", task_id))
    # Then what is recorded is the provider's answer, not the callback's claim
    assert action == "recorded"
    assert w.tasks.get(task_id).status is TaskStatus.PROCESSING  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("provider", "mode", "seconds", "expected"),
    [
        ("wavespeed", "std", 3.0, "0.25"),
        ("wavespeed", "std", 5.0, "0.25"),
        ("wavespeed", "std", 5.1, "0.50"),
        ("wavespeed", "pro", 12.0, "1.50"),
        ("cometapi", "std", 4.0, "0.30"),
        ("cometapi", "pro", 10.0, "1.20"),
    ],
)
def test_cost_is_the_price_per_started_five_seconds(provider, mode, seconds, expected) -> None:
    assert estimate_cost(provider, f"kling-v1-{mode}", seconds, make_settings(), {}) == Decimal(expected)


def test_no_failover_target_configured_means_back_in_line_not_a_crash() -> None:
    # Given only WaveSpeed is configured (CometAPI's secret still holds its empty placeholder), and it rate-limits
    wavespeed = ScriptedProvider()
    w = make_world(provider=wavespeed)
    wavespeed.script_submit(ProviderTransientError("HTTP 429"))
    # When the pair arrives and is sent
    task_id = submit_pair(w)
    # Then the task is back in WaveSpeed's line, which pauses
    task = w.tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.QUEUED
    assert task.provider == "wavespeed"
    assert w.tasks.line("wavespeed") == [task_id]
    quota = w.tasks.get_quota("wavespeed")
    assert quota is not None and quota.paused_until is not None


def test_a_callback_that_cannot_be_confirmed_now_is_acknowledged_and_polled_at_once(two) -> None:
    w, _, comet = two
    task_id = submit_pair(w, {"provider": "cometapi"})
    task = w.tasks.get(task_id)
    assert task is not None and task.provider_task_id is not None
    comet.script_callback(ProviderJob(provider_task_id=task.provider_task_id, status=ProviderJobStatus.SUCCEEDED))
    # Given CometAPI cannot answer our confirming query right now
    comet.script_fetch(ProviderTransientError("HTTP 429"))
    # When an authentic callback arrives
    action = receive_callback(w.ctx, "cometapi", task_id, {}, b"{}", callback_query("cometapi", task_id))
    # Then it is acknowledged as deferred, nothing is recorded from the unconfirmed hint, and the poller is due now
    after = w.tasks.get(task_id)
    assert action == "deferred"
    assert after is not None and after.status is TaskStatus.SUBMITTED
    assert after.next_check_at == w.clock.now


def test_a_callback_to_the_wrong_provider_route_is_refused_before_any_query(two) -> None:
    w, _, comet = two
    # Given a WaveSpeed task
    task_id = submit_pair(w)
    task = w.tasks.get(task_id)
    assert task is not None
    # When a callback for it comes in on the CometAPI route with the task's own token (made for the WaveSpeed route)
    with pytest.raises(WebhookAuthError):
        receive_callback(w.ctx, "cometapi", task_id, {}, b"{}", callback_query("wavespeed", task_id))
    # or with a token made for the CometAPI route (which only the key's holder could make)
    with pytest.raises(CallbackMismatchError):
        receive_callback(w.ctx, "cometapi", task_id, {}, b"{}", callback_query("cometapi", task_id))
    # Then CometAPI was never asked about it
    assert comet.fetches == []


def test_a_confirmed_task_created_for_another_of_our_tasks_is_refused(two) -> None:
    w, _, comet = two
    task_id = submit_pair(w, {"provider": "cometapi"})
    task = w.tasks.get(task_id)
    assert task is not None and task.provider_task_id is not None
    # Given a callback with the right token, naming our provider task, whose confirmed record says it was created
    # for some other task of ours (its external_task_id)
    comet.script_callback(ProviderJob(provider_task_id=task.provider_task_id, status=ProviderJobStatus.SUCCEEDED))
    confirmed = ProviderJob(
        provider_task_id=task.provider_task_id, status=ProviderJobStatus.SUCCEEDED, output_url="x", external_id="other"
    )
    comet.script_fetch(confirmed)
    # When it is received, it is refused and nothing changes
    with pytest.raises(CallbackMismatchError):
        receive_callback(w.ctx, "cometapi", task_id, {}, b"{}", callback_query("cometapi", task_id))
    assert w.tasks.get(task_id).status is TaskStatus.SUBMITTED  # type: ignore[union-attr]

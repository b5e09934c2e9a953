"""The dispatch function against moto: fed the task table's stream records (moto's own, with their OldImage and
NewImage, through the template's filter patterns) and wake-ups from its SQS queue, it sends the first tasks of each
provider's line as far as the account's quota allows; the providers are mocked at the HTTP layer."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import respx
from handlers.helpers import (
    MP3_BYTES,
    OTHER_MP3_BYTES,
    OTHER_PNG_BYTES,
    PNG_BYTES,
    TaskStream,
    all_actions,
    deliver_upload,
    dispatch,
    mock_cometapi_submit,
    mock_wavespeed_submit,
    wake_dispatcher,
)
from support.aws import REGION, Stack
from support.events import sqs_event

from avatar_pipeline import wiring
from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus, Task, TaskStatus, utcnow
from avatar_pipeline.domain.quota import budget_day
from avatar_pipeline.services.tracking import record_provider_news
from avatar_pipeline.wiring import pipeline

COMET_TASK_ID = "831922345719271499"


def configure(monkeypatch: pytest.MonkeyPatch, **environment: str) -> None:
    """Settings as the stack's parameters would give them; the functions' context is built again from them."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    wiring.pipeline.cache_clear()


def queue_pair(stack: Stack, job: str, *, other: bool = False) -> str:
    """A checked pair in its provider's line, through the submit function; its task id."""
    deliver_upload(stack, f"inbox/{job}/face.png", OTHER_PNG_BYTES if other else PNG_BYTES)
    result = deliver_upload(stack, f"inbox/{job}/voice.mp3", OTHER_MP3_BYTES if other else MP3_BYTES)["results"][0]
    assert result["action"] == "queued", result
    return result["task_id"]


def stored(task_id: str) -> Task:
    task = pipeline().tasks.get(task_id)
    assert task is not None
    return task


def posted_task_ids(route: respx.Route) -> list[str]:
    """Which of our tasks each POST to WaveSpeed was for (the webhook URL names it)."""
    ids = []
    for call in route.calls:
        webhook = parse_qs(urlparse(str(call.request.url)).query)["webhook"][0]
        ids.append(parse_qs(urlparse(webhook).query)["task_id"][0])
    return ids


def image(record: dict[str, Any], which: str) -> dict[str, str]:
    """status and provider of a stream record's OldImage or NewImage, as DynamoDB types them."""
    shown = record["dynamodb"].get(which, {})
    return {name: shown[name]["S"] for name in ("status", "provider") if name in shown}


def wakeup_event(stack: Stack, provider: str) -> dict[str, Any]:
    """A due wake-up for `provider`, written by the pipeline's own waker and received as Lambda would."""
    pipeline().waker.wake(provider, utcnow())  # type: ignore[arg-type]
    messages = stack.wakeups()
    assert len(messages) == 1
    return sqs_event(messages, stack.wakeup_queue_arn(), REGION)


def test_new_pairs_in_the_stream_send_the_first_in_line_as_far_as_the_render_slots_allow(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream, monkeypatch: pytest.MonkeyPatch
):
    # Given a WaveSpeed account that renders one video at once, and three pairs queued one after the other
    configure(monkeypatch, WAVESPEED_RENDERS_AT_ONCE="1")
    submit = mock_wavespeed_submit(provider_http)
    first, second, third = (queue_pair(stack, job) for job in ("ann", "ben", "cat"))
    # When the table's stream hands the dispatcher its records: the three tasks joining the line, as inserted
    records = task_stream.for_dispatch()
    assert [(r["eventName"], image(r, "NewImage")["status"]) for r in records] == [("INSERT", "QUEUED")] * 3
    assert all("OldImage" not in r["dynamodb"] and r["eventSource"] == "aws:dynamodb" for r in records)
    (answer,) = task_stream.deliver(records)
    # Then exactly the first in line was sent, and the others wait in their order for the one render slot
    assert answer == {"actions": {"submit-submitted": 1}, "waiting": "all 1 of WaveSpeed's render slots are in use"}
    assert posted_task_ids(submit) == [first]
    assert stored(first).status is TaskStatus.SUBMITTED
    assert pipeline().tasks.queue_head("wavespeed", 10) == [second, third]
    assert set(pipeline().tasks.get_quota("wavespeed").holders) == {first}  # type: ignore[union-attr]
    # And no wake-up is scheduled: a render that finishes is a change in the table, which wakes the dispatcher
    assert task_stream.settle() == []
    assert stack.scheduled_wakeups() == 0


def test_a_task_leaving_the_provider_releases_its_slot_and_the_next_in_line_is_sent(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream, monkeypatch: pytest.MonkeyPatch
):
    # Given one render slot, held by the first of two queued pairs
    configure(monkeypatch, WAVESPEED_RENDERS_AT_ONCE="1")
    submit = mock_wavespeed_submit(provider_http, prediction_id="a" * 32)
    first, second = queue_pair(stack, "dan"), queue_pair(stack, "eve")
    task_stream.settle()
    assert posted_task_ids(submit) == [first] and stored(second).status is TaskStatus.QUEUED
    # When WaveSpeed finishes the first video (its webhook records the news)
    news = ProviderJob(
        provider_task_id="a" * 32, status=ProviderJobStatus.SUCCEEDED, output_url="https://cdn.test/out.mp4"
    )
    assert record_provider_news(pipeline(), first, news) == "recorded"
    # Then the stream carries the task leaving the provider, with both images
    (record,) = task_stream.for_dispatch()
    assert record["eventName"] == "MODIFY" and record["eventSourceARN"] == task_stream.arn
    assert image(record, "OldImage") == {"status": "SUBMITTED", "provider": "wavespeed"}
    assert image(record, "NewImage") == {"status": "OUTPUT_READY", "provider": "wavespeed"}
    # When the dispatcher gets it
    (answer,) = task_stream.deliver([record])
    # Then the first task's slot is free again and the next in line took it: one more POST, for the second task
    assert answer["actions"] == {"submit-submitted": 1}
    assert posted_task_ids(submit) == [first, second]
    assert set(pipeline().tasks.get_quota("wavespeed").holders) == {second}  # type: ignore[union-attr]
    assert stored(second).status is TaskStatus.SUBMITTED
    assert pipeline().tasks.queue_length("wavespeed") == 0


def test_a_release_alone_frees_the_slot_even_with_nobody_in_line(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream
):
    # Given a submitted task holding a slot, and nobody else in line
    mock_wavespeed_submit(provider_http, prediction_id="b" * 32)
    task_id = queue_pair(stack, "fay")
    task_stream.settle()
    # When WaveSpeed reports the render failed, and that change reaches the dispatcher
    news = ProviderJob(provider_task_id="b" * 32, status=ProviderJobStatus.FAILED, error="content refused")
    record_provider_news(pipeline(), task_id, news)
    answers = task_stream.settle()
    # Then the slot is given back and nothing else happens
    assert all_actions(answers) == {}
    assert pipeline().tasks.get_quota("wavespeed").holders == {}  # type: ignore[union-attr]


def test_redelivered_and_concurrent_triggers_never_post_a_task_twice(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream
):
    # Given one pair in line, and the stream record announcing it
    submit = mock_wavespeed_submit(provider_http)
    task_id = queue_pair(stack, "gus")
    records = task_stream.for_dispatch()
    # When that record and a wake-up reach two dispatchers at the same moment
    barrier = threading.Barrier(2)
    answers: list[dict[str, Any]] = []
    events = [{"Records": records}, wakeup_event(stack, "wavespeed")]

    def invoke(event: dict[str, Any]) -> None:
        barrier.wait()
        answers.append(dispatch(event))

    threads = [threading.Thread(target=invoke, args=(event,)) for event in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # And the stream delivers the same batch again (a retried batch), and its own later records go through
    answers += task_stream.deliver(records)
    answers += task_stream.settle()
    # Then WaveSpeed got exactly one POST: one admission won, the others found nothing (left) in line
    assert submit.call_count == 1
    assert all_actions(answers) == {"submit-submitted": 1}
    task = stored(task_id)
    assert task.status is TaskStatus.SUBMITTED and task.submit_attempts == 1
    assert [h.to_status for h in task.history].count(TaskStatus.SUBMITTING) == 1
    assert set(pipeline().tasks.get_quota("wavespeed").holders) == {task_id}  # type: ignore[union-attr]


def test_a_wakeup_from_its_queue_sends_the_next_once_the_rate_window_is_over(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream, monkeypatch: pytest.MonkeyPatch
):
    # Given a WaveSpeed account that takes one submission per window (here of 3 s, so the test waits for it), and two
    # pairs in line
    configure(monkeypatch, WAVESPEED_SUBMISSIONS_PER_MINUTE="1", RATE_WINDOW_SECONDS="3")
    submit = mock_wavespeed_submit(provider_http)
    first, second = queue_pair(stack, "hal"), queue_pair(stack, "ida")
    # When the stream reaches the dispatcher
    answers = task_stream.settle()
    # Then the first was sent, the second waits for the window, and one wake-up is scheduled for its end
    assert posted_task_ids(submit) == [first]
    assert answers[-1]["waiting"] == "WaveSpeed takes 1 submissions per window"
    quota = pipeline().tasks.get_quota("wavespeed")
    assert quota is not None and quota.wake_at is not None and quota.wake_at > quota.recent[-1]
    assert stack.scheduled_wakeups() == 1
    # When a third pair joins the line meanwhile
    third = queue_pair(stack, "jim", other=True)
    task_stream.settle()
    # Then it waits too, and no second wake-up is scheduled for the same moment
    assert stack.scheduled_wakeups() == 1 and submit.call_count == 1
    # When the wake-up comes due and its queue hands it to the dispatcher
    answer = wake_dispatcher(stack, wait_seconds=10)
    # Then the next in line (not the one that came later) is sent, and the next window's wake-up is scheduled
    assert answer is not None and answer["actions"] == {"submit-submitted": 1}
    assert posted_task_ids(submit) == [first, second]
    assert stored(third).status is TaskStatus.QUEUED
    assert stack.scheduled_wakeups() == 1


def test_a_task_turned_away_fails_over_to_the_other_providers_line_and_is_sent_there(
    cometapi: None,
    stack: Stack,
    provider_http: respx.MockRouter,
    task_stream: TaskStream,
):
    # Given WaveSpeed is down (503), CometAPI is configured and accepts, and the job allows failover (the default)
    wavespeed = provider_http.post(url__regex=r".*/api/v3/kwaivgi/.*").mock(
        return_value=httpx.Response(503, json={"message": "overloaded"})
    )
    comet = mock_cometapi_submit(provider_http, COMET_TASK_ID)
    task_id = queue_pair(stack, "kay")
    # When the dispatcher sends it to WaveSpeed, which turns it away
    first = task_stream.deliver(task_stream.for_dispatch())
    assert all_actions(first) == {"submit-requeued": 1} and wavespeed.call_count == 3
    # Then the stream carries it leaving WaveSpeed for CometAPI's line
    records = task_stream.for_dispatch()
    moved = [r for r in records if image(r, "OldImage").get("status") == "SUBMITTING"]
    assert len(moved) == 1
    assert image(moved[0], "OldImage") == {"status": "SUBMITTING", "provider": "wavespeed"}
    assert image(moved[0], "NewImage") == {"status": "QUEUED", "provider": "cometapi"}
    # When that reaches the dispatcher
    answers = task_stream.deliver(records) + task_stream.settle()
    # Then CometAPI got it, once; WaveSpeed holds nothing and pauses, CometAPI holds its slot
    assert all_actions(answers) == {"submit-submitted": 1}
    assert comet.call_count == 1 and wavespeed.call_count == 3
    task = stored(task_id)
    assert (task.status, task.provider, task.failed_over_from) == (TaskStatus.SUBMITTED, "cometapi", "wavespeed")
    assert task.provider_task_id == COMET_TASK_ID
    wavespeed_quota, comet_quota = (pipeline().tasks.get_quota(name) for name in ("wavespeed", "cometapi"))
    assert wavespeed_quota is not None and wavespeed_quota.holders == {} and wavespeed_quota.paused_until is not None
    assert comet_quota is not None and set(comet_quota.holders) == {task_id}


def test_a_pair_that_waited_long_spills_over_to_the_other_providers_line_when_its_dispatcher_wakes(
    cometapi: None,
    stack: Stack,
    provider_http: respx.MockRouter,
    task_stream: TaskStream,
    monkeypatch: pytest.MonkeyPatch,
):
    # Given WaveSpeed renders one at a time, a spill-over time of 1 s, and two pairs: one rendering, one in line
    configure(monkeypatch, WAVESPEED_RENDERS_AT_ONCE="1", SPILL_OVER_AFTER_SECONDS="1")
    wavespeed = mock_wavespeed_submit(provider_http)
    comet = mock_cometapi_submit(provider_http, COMET_TASK_ID)
    rendering, waiting = queue_pair(stack, "ned"), queue_pair(stack, "ola", other=True)
    task_stream.settle()
    assert posted_task_ids(wavespeed) == [rendering]
    # When the second has waited past the spill-over time and CometAPI's dispatcher wakes (its line empty)
    time.sleep(1.1)
    answer = dispatch(wakeup_event(stack, "cometapi"))
    # Then the pair moved to CometAPI's line and was sent there, once; WaveSpeed's line is empty
    assert answer["actions"] == {"submit-submitted": 1}
    assert comet.call_count == 1 and posted_task_ids(wavespeed) == [rendering]
    task = stored(waiting)
    assert (task.status, task.provider, task.failed_over_from) == (TaskStatus.SUBMITTED, "cometapi", "wavespeed")
    assert pipeline().tasks.queue_length("wavespeed") == 0
    assert set(pipeline().tasks.get_quota("cometapi").holders) == {waiting}  # type: ignore[union-attr]


def test_the_daily_spend_limit_holds_the_line_and_says_why(
    stack: Stack,
    provider_http: respx.MockRouter,
    task_stream: TaskStream,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    # Given a spend limit of $0.40 a day, and two pairs of an estimated $0.25 each
    configure(monkeypatch, DAILY_SPEND_LIMIT_USD="0.40")
    submit = mock_wavespeed_submit(provider_http)
    first, second = queue_pair(stack, "lou"), queue_pair(stack, "max")
    assert stored(first).estimated_cost_usd == stored(second).estimated_cost_usd == "0.25"
    capsys.readouterr()
    # When the stream reaches the dispatcher
    answers = task_stream.settle()
    # Then only the first was sent and counted against the day; the second waits, saying why
    assert posted_task_ids(submit) == [first]
    assert pipeline().tasks.spent_on(budget_day(utcnow())) == Decimal("0.25")
    assert answers[0]["waiting"] == "today's spend limit of $0.40 is reached"
    waiting = stored(second)
    assert waiting.status is TaskStatus.QUEUED
    assert waiting.reason == (
        "first in line for WaveSpeed; today's spend limit of $0.40 is reached: nothing more is sent before 00:00 UTC"
    )
    # And the metric the spend-limit alarm watches was emitted
    assert '"AdmissionBlockedBySpendLimit"' in capsys.readouterr().out

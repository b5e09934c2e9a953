"""The webhook function against moto: authenticate, process each delivery once, record with a conditional write.

Every refusal is checked twice: the HTTP status the provider gets, and a task left exactly as it was (same version,
status and history).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import boto3
import httpx
import pytest
import respx
from handlers.helpers import (
    MP3_BYTES,
    PNG_BYTES,
    TaskStream,
    comet_task,
    deliver_upload,
    envelope,
    mock_cometapi_query,
    mock_cometapi_submit,
    mock_wavespeed_submit,
    prediction,
    upload,
)
from support.aws import REGION, WAVESPEED_BASE_URL, WEBHOOK_SECRET, Stack
from support.events import FakeLambdaContext, api_post, sample, signed_headers
from support.fakes import callback_query
from webhook_handler import MAX_BODY_BYTES, lambda_handler

from avatar_pipeline import wiring
from avatar_pipeline.config import WebhookSettings
from avatar_pipeline.domain.models import Task, TaskStatus
from avatar_pipeline.services.tracking import poll
from avatar_pipeline.wiring import pipeline

PREDICTION_ID = "c" * 32
COMET_TASK_ID = "831922345719271433"
OUTPUT_URL = "https://d111111abcdef8.cloudfront.net/output/video.mp4"
RECORDED = {"status": 200, "body": {"message": "recorded"}}
DUPLICATE = {"status": 200, "body": {"message": "duplicate"}}


@pytest.fixture
def submitted_task(stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream) -> Task:
    mock_wavespeed_submit(provider_http, prediction_id=PREDICTION_ID)
    deliver_upload(stack, "inbox/carol/face.png", PNG_BYTES)
    task_id = deliver_upload(stack, "inbox/carol/voice.mp3", MP3_BYTES)["results"][0]["task_id"]
    task_stream.settle()  # the dispatcher sends it
    task = pipeline().tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.SUBMITTED
    return task


@pytest.fixture
def cometapi_task(cometapi: None, stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream) -> Task:
    mock_cometapi_submit(provider_http, COMET_TASK_ID)
    upload(stack, "inbox/dora/job.json", json.dumps({"provider": "cometapi"}).encode())
    deliver_upload(stack, "inbox/dora/face.png", PNG_BYTES)
    task_id = deliver_upload(stack, "inbox/dora/voice.mp3", MP3_BYTES)["results"][0]["task_id"]
    task_stream.settle()  # the dispatcher sends it
    task = pipeline().tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.SUBMITTED and task.provider == "cometapi"
    return task


# --- requests and checks -------------------------------------------------------------------------------------


def post(provider: str, query: dict[str, str], body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """``POST /webhooks/<provider>?<query>`` through the handler: the answer's status and JSON body."""
    response = lambda_handler(api_post(provider, query, body, headers), FakeLambdaContext())
    return {"status": response["statusCode"], "body": json.loads(response["body"])}


def new_webhook_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def token_of(provider: str, task_id: str) -> str:
    """The token in the task's callback URL, as the dispatcher made it."""
    return callback_query(provider, task_id)["token"]


def callback(
    task_id: str | None,
    body: dict | bytes,
    *,
    secret: str = WEBHOOK_SECRET,
    webhook_id: str | None = None,
    timestamp: int | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """A WaveSpeed webhook about the task, signed with `secret`, to the task's callback URL (carrying `token`, by
    default the task's own): a new delivery unless `webhook_id` names one."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = signed_headers(raw, secret, webhook_id or new_webhook_id(), timestamp or int(time.time()))
    query = {"task_id": task_id, "token": token or token_of("wavespeed", task_id)} if task_id else {}
    return post("wavespeed", query, raw, headers)


def comet_callback(task_id: str, body: dict, token: str | None) -> dict[str, Any]:
    """A CometAPI callback about the task (unsigned), with `token` in its URL when one is given."""
    query = {"task_id": task_id} | ({"token": token} if token is not None else {})
    return post("cometapi", query, json.dumps(body).encode(), {"content-type": "application/json"})


def completed() -> dict:
    return prediction(PREDICTION_ID, "completed", outputs=[OUTPUT_URL])


def stored(task_id: str) -> Task:
    task = pipeline().tasks.get(task_id)
    assert task is not None
    return task


def assert_untouched(before: Task) -> None:
    after = stored(before.task_id)
    assert (after.version, after.status, after.history) == (before.version, before.status, before.history)


def mark_completed(task_id: str) -> Task:
    """Move the task on to COMPLETED, as finalize would."""
    task = stored(task_id)
    done = task.model_copy(update={"status": TaskStatus.COMPLETED, "version": task.version + 1})
    pipeline().tasks.replace(done, expected=task)
    return stored(task_id)


def emitted_metrics(stdout: str) -> dict[str, float]:
    """The metrics in the embedded-metric-format lines Powertools printed (other lines are logs), summed by name."""
    totals: dict[str, float] = {}
    for line in stdout.splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        for directive in record.get("_aws", {}).get("CloudWatchMetrics", []):
            for metric in directive["Metrics"]:
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + sum(record[metric["Name"]])
    return totals


# --- accepted ------------------------------------------------------------------------------------------------


def test_signed_completion_moves_the_task_to_output_ready(submitted_task: Task):
    # When WaveSpeed calls back, signed, with the finished prediction
    answer = callback(submitted_task.task_id, completed())
    # Then it is recorded and the task is ready for finalize
    assert answer == RECORDED
    task = stored(submitted_task.task_id)
    assert task.status is TaskStatus.OUTPUT_READY
    assert task.provider_output_url == OUTPUT_URL


def test_a_wavespeed_callback_builds_no_storage_notification_or_http_client(
    submitted_task: Task, monkeypatch: pytest.MonkeyPatch
):
    # Given a fresh container (its pipeline not built yet), counting the AWS clients and HTTP clients it makes
    wiring.pipeline.cache_clear()
    services: list[str] = []
    http_clients: list[object] = []
    make_client, make_http = boto3.session.Session.client, httpx.Client.__init__

    def counting_client(self: boto3.session.Session, service_name: str, *args: Any, **kwargs: Any) -> Any:
        services.append(service_name)
        return make_client(self, service_name, *args, **kwargs)

    def counting_http(self: httpx.Client, *args: Any, **kwargs: Any) -> None:
        http_clients.append(self)
        make_http(self, *args, **kwargs)

    monkeypatch.setattr(boto3.session.Session, "client", counting_client)
    monkeypatch.setattr(httpx.Client, "__init__", counting_http)

    # When WaveSpeed's signed completion callback arrives
    answer = callback(submitted_task.task_id, completed())

    # Then it is recorded with the task table, the delivery log and the webhook secret alone: no S3, SNS or SQS
    # client, and no outgoing HTTP client (the signature is checked locally)
    assert answer == RECORDED
    assert sorted(set(services)) == ["dynamodb", "secretsmanager"]
    assert http_clients == []


def test_two_secrets_are_valid_at_once_while_rotating(submitted_task: Task, stack: Stack):
    # Given the secret holds the old and the new webhook secret, and the one before them is retired
    boto3.client("secretsmanager", region_name=REGION).put_secret_value(
        SecretId=stack.webhook_secret_id,
        SecretString=json.dumps({"webhook_secret": "whsec_old_secret, whsec_new_secret"}),
    )
    wiring.pipeline.cache_clear()  # read again, as every container does once its copy is 5 minutes old
    # When a callback signed with the retired secret comes
    retired = callback(submitted_task.task_id, prediction(PREDICTION_ID, "processing"), secret=WEBHOOK_SECRET)
    # Then it is refused and changes nothing
    assert retired["status"] == 401
    assert_untouched(submitted_task)
    # When WaveSpeed signs one callback with the old secret and the next with the new one
    old = callback(submitted_task.task_id, prediction(PREDICTION_ID, "processing"), secret="whsec_old_secret")
    new = callback(submitted_task.task_id, completed(), secret="whsec_new_secret")
    # Then both are recorded
    assert old == new == RECORDED
    assert [h.to_status for h in stored(submitted_task.task_id).history][-2:] == [
        TaskStatus.PROCESSING,
        TaskStatus.OUTPUT_READY,
    ]


def test_late_webhook_after_completion_cannot_move_the_task_back(submitted_task: Task):
    # Given the task completed
    done = mark_completed(submitted_task.task_id)
    # When a late "failed" callback arrives for it (a delivery of its own)
    answer = callback(submitted_task.task_id, prediction(PREDICTION_ID, "failed", error="late", code=5000))
    # Then it is acknowledged, and the task stays COMPLETED
    assert answer == {"status": 200, "body": {"message": "unchanged"}}
    assert_untouched(done)


# --- each delivery once --------------------------------------------------------------------------------------


def test_replayed_delivery_is_acknowledged_as_a_duplicate_and_changes_nothing(submitted_task: Task):
    # Given a completion delivered and recorded
    raw = json.dumps(completed()).encode()
    headers = signed_headers(raw, WEBHOOK_SECRET, "msg_once", int(time.time()))
    assert post("wavespeed", callback_query("wavespeed", submitted_task.task_id), raw, headers) == RECORDED
    recorded = stored(submitted_task.task_id)
    # When the same delivery comes again: as captured (same signature), and as WaveSpeed retries it (signed afresh)
    replayed = post("wavespeed", callback_query("wavespeed", submitted_task.task_id), raw, headers)
    retried = callback(submitted_task.task_id, completed(), webhook_id="msg_once", timestamp=int(time.time()) + 1)
    # Then both are acknowledged as duplicates, and the task is exactly as the first delivery left it
    assert replayed == retried == DUPLICATE
    assert_untouched(recorded)


def test_replay_of_a_delivery_for_a_task_since_completed_is_a_duplicate(submitted_task: Task):
    # Given the completion was recorded, and the task has since been finalized
    assert callback(submitted_task.task_id, completed(), webhook_id="msg_done") == RECORDED
    done = mark_completed(submitted_task.task_id)
    # When that delivery is replayed
    answer = callback(submitted_task.task_id, completed(), webhook_id="msg_done")
    # Then it is a duplicate, and the COMPLETED task is untouched
    assert answer == DUPLICATE
    assert_untouched(done)


def test_delivery_that_failed_midway_is_processed_when_the_provider_retries_it(
    submitted_task: Task, monkeypatch: pytest.MonkeyPatch
):
    # Given the task table fails the first delivery's write
    tasks = pipeline(WebhookSettings).tasks  # the webhook function's own pipeline, as its container has it
    write = tasks.replace
    failures = [RuntimeError("DynamoDB is unavailable")]

    def replace_failing_once(new: Task, *, expected: Task) -> None:
        if failures:
            raise failures.pop()
        write(new, expected=expected)

    monkeypatch.setattr(tasks, "replace", replace_failing_once)
    with pytest.raises(RuntimeError, match="unavailable"):
        callback(submitted_task.task_id, completed(), webhook_id="msg_retry")  # API Gateway answers 502
    assert_untouched(submitted_task)
    # When WaveSpeed retries the delivery
    answer = callback(submitted_task.task_id, completed(), webhook_id="msg_retry")
    # Then it is processed (the failed attempt was not remembered), once
    assert answer == RECORDED
    assert stored(submitted_task.task_id).status is TaskStatus.OUTPUT_READY
    assert callback(submitted_task.task_id, completed(), webhook_id="msg_retry") == DUPLICATE


def test_duplicate_arriving_while_the_first_is_processed_is_asked_to_retry(
    submitted_task: Task, monkeypatch: pytest.MonkeyPatch
):
    # Given a delivery whose twin arrives while it is being processed (here: as it reads the task)
    tasks = pipeline(WebhookSettings).tasks  # the webhook function's own pipeline, as its container has it
    read = tasks.get
    twin: list[dict[str, Any]] = []

    def read_as_the_twin_arrives(task_id: str) -> Task | None:
        if not twin:
            twin.append(callback(submitted_task.task_id, completed(), webhook_id="msg_twins"))
        return read(task_id)

    monkeypatch.setattr(tasks, "get", read_as_the_twin_arrives)
    # When the first is processed
    first = callback(submitted_task.task_id, completed(), webhook_id="msg_twins")
    # Then the twin was answered 429 (WaveSpeed tries again later) while the first recorded the news
    assert [answer["status"] for answer in twin] == [429]
    assert first == RECORDED
    # And the twin's retry, once the first is done, is a duplicate
    assert callback(submitted_task.task_id, completed(), webhook_id="msg_twins") == DUPLICATE
    assert [h.to_status for h in stored(submitted_task.task_id).history].count(TaskStatus.OUTPUT_READY) == 1


def test_webhook_and_poller_racing_produce_one_transition(submitted_task: Task, provider_http: respx.MockRouter):
    # Given the provider's result endpoint also says completed, and the task is due for a poll
    provider_http.get(f"{WAVESPEED_BASE_URL}/api/v3/predictions/{PREDICTION_ID}/result").mock(
        return_value=envelope(completed())
    )
    context = pipeline()
    context.clock = lambda: submitted_task.next_check_at  # type: ignore[assignment, return-value]
    barrier = threading.Barrier(2)
    answers: list[object] = []

    def webhook() -> None:
        barrier.wait()
        answers.append(callback(submitted_task.task_id, completed()))

    def poller() -> None:
        barrier.wait()
        answers.append(poll(context, time_left=lambda: timedelta(minutes=1)))

    # When both record the completion at the same moment
    threads = [threading.Thread(target=webhook), threading.Thread(target=poller)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then exactly one of them moved the task
    task = stored(submitted_task.task_id)
    assert task.status is TaskStatus.OUTPUT_READY
    assert [h.to_status for h in task.history].count(TaskStatus.OUTPUT_READY) == 1


# --- refused: not authentic ----------------------------------------------------------------------------------


def test_forged_signature_is_refused_without_any_change(submitted_task: Task):
    # When someone sends a completion with a made-up signature
    raw = json.dumps(completed()).encode()
    headers = signed_headers(raw, WEBHOOK_SECRET, new_webhook_id(), int(time.time()))
    headers["webhook-signature"] = "v3," + "0" * 64
    answer = post("wavespeed", callback_query("wavespeed", submitted_task.task_id), raw, headers)
    # Then 401, and the task is untouched
    assert answer["status"] == 401
    assert_untouched(submitted_task)


def test_callback_signed_with_another_secret_is_refused(submitted_task: Task):
    answer = callback(submitted_task.task_id, completed(), secret="whsec_not_the_secret")
    assert answer["status"] == 401
    assert_untouched(submitted_task)


# 30 s beyond the window, not 1: the handler's clock reads a moment after the timestamp is made, and on a loaded
# machine that moment was once over a second (the exact bound is the adapter's unit tests' to pin).
@pytest.mark.parametrize("skew", [-330, 330], ids=["stale", "future"])
def test_timestamp_more_than_300_s_away_is_refused(submitted_task: Task, skew: int):
    # When a validly signed callback's timestamp is over 5 minutes in the past or in the future
    answer = callback(submitted_task.task_id, completed(), timestamp=int(time.time()) + skew)
    # Then 401, and the task is untouched
    assert answer["status"] == 401
    assert_untouched(submitted_task)


def test_failed_authentication_is_counted(submitted_task: Task, capsys: pytest.CaptureFixture[str]):
    capsys.readouterr()  # what the fixtures printed
    # When a callback fails authentication
    callback(submitted_task.task_id, completed(), secret="whsec_not_the_secret")
    # Then the WebhookAuthFailure metric (the one to alarm on) counts it, next to the answer's status
    assert emitted_metrics(capsys.readouterr().out) == {"WebhookAuthFailure": 1, "CallbackAnswered401": 1}


def test_sample_event_is_understood_by_the_handler(
    stack: Stack, provider_http: respx.MockRouter, caplog: pytest.LogCaptureFixture
):
    # The checked-in sample event carries its task's token and is signed with the test secret, but its timestamp is
    # long past: it passes the token check and is refused as stale.
    response = lambda_handler(sample("webhook_wavespeed_completed.json"), FakeLambdaContext())
    assert response["statusCode"] == 401
    assert [getattr(record, "error", None) for record in caplog.records if record.levelname == "WARNING"] == [
        "webhook-timestamp is outside the accepted window"
    ]


def test_cometapi_callback_with_a_wrong_or_no_token_is_refused_unconfirmed(
    cometapi_task: Task, provider_http: respx.MockRouter
):
    # Given CometAPI would confirm that the task failed
    body = comet_task(COMET_TASK_ID, "failed", task_status_msg="content refused")
    query = mock_cometapi_query(provider_http, body)
    # When its callback comes with a wrong token, or none
    wrong = comet_callback(cometapi_task.task_id, body, token="not-the-token")
    missing = comet_callback(cometapi_task.task_id, body, token=None)
    # Then both are refused without asking CometAPI, and the task is untouched
    assert (wrong["status"], missing["status"]) == (401, 401)
    assert not query.called
    assert_untouched(cometapi_task)
    # While the same callback with the task's token is confirmed and recorded
    assert comet_callback(cometapi_task.task_id, body, token=token_of("cometapi", cometapi_task.task_id)) == RECORDED
    assert stored(cometapi_task.task_id).status is TaskStatus.FAILED


# --- refused: authentic, but not for this task ---------------------------------------------------------------


def test_callback_about_another_prediction_is_a_conflict(submitted_task: Task):
    answer = callback(submitted_task.task_id, prediction("d" * 32, "completed", outputs=[OUTPUT_URL]))
    assert answer["status"] == 409
    assert_untouched(submitted_task)


def test_wavespeed_callback_for_a_cometapi_task_is_a_conflict(cometapi_task: Task):
    # When WaveSpeed, validly signed, calls back about a task CometAPI is making
    answer = callback(cometapi_task.task_id, prediction(COMET_TASK_ID, "completed", outputs=[OUTPUT_URL]))
    # Then 409: authentic, but addressed to a task of another provider; the task is untouched
    assert answer["status"] == 409
    assert_untouched(cometapi_task)


def test_cometapi_callback_for_a_wavespeed_task_is_refused(cometapi: None, submitted_task: Task):
    body = comet_task(PREDICTION_ID, "succeed", task_result={"videos": [{"id": "v", "url": OUTPUT_URL}]})
    # When /webhooks/cometapi is called about a WaveSpeed task: with no token, and with the token of the task's own
    # (WaveSpeed) callback URL, leaked
    anonymous = comet_callback(submitted_task.task_id, body, token=None)
    leaked = comet_callback(submitted_task.task_id, body, token=token_of("wavespeed", submitted_task.task_id))
    # Then both are refused: a token names the provider it was made for as well as the task
    assert (anonymous["status"], leaked["status"]) == (401, 401)
    assert_untouched(submitted_task)


# --- refused: not a callback we can take ---------------------------------------------------------------------


def test_body_over_the_size_cap_is_refused(submitted_task: Task):
    # When a validly signed callback's body is over 256 KiB
    answer = callback(submitted_task.task_id, completed() | {"padding": "x" * MAX_BODY_BYTES})
    # Then 413, and the task is untouched
    assert answer["status"] == 413
    assert_untouched(submitted_task)


def test_signed_but_malformed_json_is_a_bad_request(submitted_task: Task):
    answer = callback(submitted_task.task_id, b'{"id": "x", "status": ')
    assert answer["status"] == 400
    assert_untouched(submitted_task)


def test_callback_without_a_task_id_is_a_bad_request(submitted_task: Task):
    answer = callback(None, completed())
    assert answer == {"status": 400, "body": {"message": "task_id query parameter missing"}}
    assert_untouched(submitted_task)


def test_signed_callback_for_an_unknown_task_is_not_found(submitted_task: Task):
    answer = callback("f" * 32, completed())
    assert answer["status"] == 404
    assert_untouched(submitted_task)


@pytest.mark.parametrize("task_id", ["no-such-task", "x" * 3000, "F" * 32, "0" * 31])
def test_callback_whose_task_id_is_not_a_task_id_is_a_bad_request(submitted_task: Task, task_id: str):
    """Given a task id of the wrong form (one of 3,000 characters is over DynamoDB's key size, which answered 500),
    then the callback is refused before anything is read."""
    answer = callback(task_id, completed())
    assert answer == {"status": 400, "body": {"message": "task_id is not a task id"}}
    assert_untouched(submitted_task)


def test_cometapi_callback_for_an_unknown_task_is_refused_as_a_wrong_token_is(
    cometapi_task: Task, provider_http: respx.MockRouter
):
    """Given CometAPI callbacks carry a token, then one for a task that does not exist answers exactly as one with a
    wrong token for a task that does (401), so answers never tell which task ids exist."""
    body = comet_task(COMET_TASK_ID, "failed")
    query = mock_cometapi_query(provider_http, body)

    unknown = comet_callback("e" * 32, body, token="a-guess")
    wrong = comet_callback(cometapi_task.task_id, body, token="a-guess")

    assert unknown == wrong == {"status": 401, "body": {"message": "callback not authenticated"}}
    assert not query.called
    assert_untouched(cometapi_task)


@pytest.mark.parametrize("token", [None, "a-guess", "another-tasks"])
def test_validly_signed_callback_without_the_tasks_token_is_refused_unread(
    submitted_task: Task, monkeypatch: pytest.MonkeyPatch, token: str | None
):
    """The signature covers the body, not the URL: a delivery captured for one task, replayed to another task's URL,
    is refused by the token, which is checked before the table is read."""
    reads: list[str] = []
    tasks = pipeline(WebhookSettings).tasks  # the webhook function's own pipeline, as its container has it
    read = tasks.get
    monkeypatch.setattr(tasks, "get", lambda task_id: reads.append(task_id) or read(task_id))
    raw = json.dumps(completed()).encode()
    headers = signed_headers(raw, WEBHOOK_SECRET, new_webhook_id(), int(time.time()))
    query = {"task_id": submitted_task.task_id}
    if token is not None:
        query["token"] = token_of("wavespeed", "0" * 32) if token == "another-tasks" else token
    answer = post("wavespeed", query, raw, headers)
    assert answer == {"status": 401, "body": {"message": "callback not authenticated"}}
    assert reads == []
    assert_untouched(submitted_task)


@pytest.mark.parametrize("provider", ["wavespeed", "cometapi"])
def test_no_callback_token_is_stored_in_the_task_table(
    cometapi: None, stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream, provider: str
):
    """Given a task sent to a provider with its callback URL, then the task table holds nothing a caller could use as
    the token: it is derived again on each callback, not read."""
    mock_wavespeed_submit(provider_http, prediction_id=PREDICTION_ID)
    mock_cometapi_submit(provider_http, COMET_TASK_ID)
    upload(stack, "inbox/erin/job.json", json.dumps({"provider": provider}).encode())
    deliver_upload(stack, "inbox/erin/face.png", PNG_BYTES)
    task_id = deliver_upload(stack, "inbox/erin/voice.mp3", MP3_BYTES)["results"][0]["task_id"]
    task_stream.settle()
    assert stored(task_id).status is TaskStatus.SUBMITTED
    item = boto3.client("dynamodb", region_name=REGION).get_item(
        TableName=stack.table, Key={"pk": {"S": f"TASK#{task_id}"}}
    )["Item"]
    assert token_of(provider, task_id) not in json.dumps(item)
    assert not [name for name in item if "token" in name]


def test_callback_to_an_unknown_provider_is_not_found(submitted_task: Task):
    raw = json.dumps(completed()).encode()
    headers = signed_headers(raw, WEBHOOK_SECRET, new_webhook_id(), int(time.time()))
    answer = post("acme", callback_query("acme", submitted_task.task_id), raw, headers)
    assert answer == {"status": 404, "body": {"message": "no provider called 'acme'"}}
    assert_untouched(submitted_task)

"""End to end through the local stack: S3 upload → submit → simulator → webhook/poller → finalize → S3 + SNS."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import httpx
import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.corpus import corpus, partner_for
from support.e2e import E2E

from avatar_local.simulators.fal import JWKS_PATH, webhook_message
from avatar_local.simulators.faults import FaultPlan
from avatar_local.simulators.media import probe_media
from avatar_local.twin.template import functions, load_template
from avatar_pipeline.domain.models import JobOptions, TaskStatus

pytestmark = pytest.mark.e2e


def test_every_function_of_the_template_runs_with_its_events_wired(e2e: E2E) -> None:
    # Given the template's functions, and the bucket notifications of its SAM transform
    specs = functions(load_template(e2e.stack.config.root / "template.yaml"))
    notifications = [
        (configuration["Function"]["Fn::GetAtt"][0], f"{bucket} notification {number}")
        for bucket, resource in e2e.stack.transformed["Resources"].items()
        if resource["Type"] == "AWS::S3::Bucket"
        for number, configuration in enumerate(
            resource["Properties"].get("NotificationConfiguration", {}).get("LambdaConfigurations", [])
        )
    ]
    # Then each runs locally, and each of its events and notifications has a local source
    assert set(e2e.stack.pools) == {spec.logical_id for spec in specs}
    assert notifications == [("SubmitFunction", "MediaBucket notification 0")]
    assert sorted(e2e.stack.wired_events) == sorted(
        [(spec.logical_id, event.name) for spec in specs for event in spec.events] + notifications
    )


def test_folder_job_becomes_a_real_mp4_with_one_notification(e2e: E2E, tmp_path: Path) -> None:
    # When a face and a voice are uploaded as a folder job with options
    task = e2e.run("e2e-folder", options=JobOptions(prompt="a calm presenter", mode="pro"))
    # Then the task completed, the video is a real MP4 as long as the voice, and one notification says where it is
    assert task.status is TaskStatus.COMPLETED, task.reason
    video = e2e.client.download(task, tmp_path)
    info = probe_media(video)
    assert info.has_video and info.has_audio
    assert abs(info.duration - e2e.samples.voice_seconds) <= 0.2
    (note,) = e2e.notifications("e2e-folder")
    assert note["attributes"] == {"status": "COMPLETED", "job": "e2e-folder"}
    assert note["body"]["output"] == task.output.uri  # type: ignore[union-attr]
    assert note["body"]["download_url"].startswith("http")
    submissions = [r for r in e2e.stack.simulator.submissions() if "e2e-folder" in r["json"]["image"]]
    assert len(submissions) == 1 and "avatar-pro" in submissions[0]["path"]
    assert submissions[0]["json"]["prompt"] == "a calm presenter"


def test_a_jobs_state_changes_arrive_on_the_bus_in_order_and_valid_against_the_schema(e2e: E2E) -> None:
    # When a job runs to completion
    task = e2e.run("e2e-events")
    assert task.status is TaskStatus.COMPLETED, task.reason
    # Then an app's rule got one event per move of its task, each valid against the published schema
    events = e2e.events("e2e-events", settle=4.0)
    schema = json.loads((e2e.stack.config.root / "schemas" / "avatar-task-state-change.schema.json").read_text())
    for event in events:
        jsonschema.validate(event, schema)
    details = sorted({e["detail"]["event_id"]: e["detail"] for e in events}.values(), key=lambda d: d["sequence"])
    assert [d["sequence"] for d in details] == list(range(1, len(task.history) + 1))
    # In the task's order, from its first file to its video, naming the video once it is there
    assert [d["status"] for d in details] == [step.to_status.value for step in task.history]
    assert details[-1]["status"] == "COMPLETED" and details[-1]["output"] == task.output.uri  # type: ignore[union-attr]
    assert {e["resources"][0] for e in events} == {task.task_id}


def test_same_stem_pair_completes(e2e: E2E) -> None:
    # When a pair is uploaded as inbox/<stem>.png + inbox/<stem>.mp3
    assert e2e.stack.info is not None
    s3 = e2e.stack.aws.client("s3")
    s3.upload_file(str(e2e.samples.face), e2e.stack.info.bucket, "inbox/e2e-stem.png")
    s3.upload_file(str(e2e.samples.voice), e2e.stack.info.bucket, "inbox/e2e-stem.mp3")
    task = e2e.client.wait("e2e-stem", 60, interval=0.25)
    # Then it completes like a folder job
    assert task.status is TaskStatus.COMPLETED, task.reason
    assert [n["body"]["status"] for n in e2e.notifications("e2e-stem")] == ["COMPLETED"]


def test_lost_webhook_is_made_good_by_the_poller(e2e: E2E) -> None:
    # Given the provider never delivers its webhook
    e2e.faults(FaultPlan(processing_seconds=0.5, lost_webhook_rate=1.0))
    # When a job runs
    task = e2e.run("e2e-lost-webhook", timeout=90)
    # Then the poller found the result, and the job completed with one notification
    assert task.status is TaskStatus.COMPLETED, task.reason
    assert any("finished the video" in h.reason for h in task.history)
    assert len(e2e.notifications("e2e-lost-webhook")) == 1


def test_duplicated_webhook_gives_one_notification(e2e: E2E) -> None:
    # Given the provider delivers every webhook twice
    e2e.faults(FaultPlan(processing_seconds=0.5, duplicate_webhook_rate=1.0))
    # When a job runs
    task = e2e.run("e2e-dup-webhook")
    # Then it completed once, with exactly one notification
    assert task.status is TaskStatus.COMPLETED, task.reason
    assert [h.to_status for h in task.history].count(TaskStatus.OUTPUT_READY) == 1
    assert len(e2e.notifications("e2e-dup-webhook", settle=5.0)) == 1
    # And both copies were acknowledged at once (the second as a duplicate), so WaveSpeed retried neither
    deliveries = e2e.stack.simulator.webhook_deliveries()
    copies = [
        (d["duplicate"], d["attempt"], d["status"]) for d in deliveries if d["prediction_id"] == task.provider_task_id
    ]
    assert copies == [(False, 1, 200), (True, 1, 200)]


def test_failed_provider_task_gives_a_failed_notification_with_the_reason(e2e: E2E) -> None:
    # Given the provider fails every task with a documented code
    e2e.faults(FaultPlan(processing_seconds=0.5, fail_rate=1.0, fail_code=1403))
    # When a job runs
    task = e2e.run("e2e-failed")
    # Then the task FAILED with the provider's code, and the one notification says why
    assert task.status is TaskStatus.FAILED
    assert "1403" in (task.reason or "")
    (note,) = e2e.notifications("e2e-failed")
    assert note["attributes"]["status"] == "FAILED"
    assert "1403" in note["body"]["reason"]


@pytest.mark.parametrize("name", ["webp-as-jpg", "side-299", "mp3-1.9-s"])
def test_bad_inputs_end_rejected_with_a_reason_and_no_provider_call(e2e: E2E, name: str) -> None:
    # Given a corpus case that must be refused, with a valid partner
    case = next(case for case in corpus() if case.name == name)
    partner = partner_for(case)
    job = f"e2e-bad-{name}"
    assert e2e.stack.info is not None
    s3 = e2e.stack.aws.client("s3")
    before = len(e2e.stack.simulator.submissions())
    # When both are uploaded
    for item in (partner, case):
        s3.put_object(Bucket=e2e.stack.info.bucket, Key=f"inbox/{job}/{item.key.rsplit('/', 1)[-1]}", Body=item.data)
    task = e2e.client.wait(job, 30, interval=0.25)
    # Then the task is REJECTED with the reason, one notification says so, and the provider was never called
    assert task.status is TaskStatus.REJECTED
    assert case.expected in (task.reason or "")
    (note,) = e2e.notifications(job)
    assert note["attributes"]["status"] == "REJECTED" and case.expected in note["body"]["reason"]
    assert len(e2e.stack.simulator.submissions()) == before


def test_cometapi_job_becomes_a_real_mp4_with_one_notification(e2e: E2E, tmp_path: Path) -> None:
    # When a job asks for CometAPI in its job.json
    before = len(e2e.stack.comet_simulator.submissions())
    task = e2e.run("e2e-comet", options=JobOptions(provider="cometapi", model="kling-v1-pro"))
    # Then CometAPI made it (its callbacks authenticated by the task's token and confirmed by a query),
    # the video is a real MP4 as long as the voice, and one notification carries the estimated cost
    assert task.status is TaskStatus.COMPLETED, task.reason
    assert task.provider == "cometapi"
    assert len(e2e.stack.comet_simulator.submissions()) == before + 1
    info = probe_media(e2e.client.download(task, tmp_path))
    assert info.has_video and info.has_audio and abs(info.duration - e2e.samples.voice_seconds) <= 0.2
    (note,) = e2e.notifications("e2e-comet", settle=4.0)
    assert note["body"]["provider"] == "cometapi" and note["body"]["estimated_cost_usd"] == "0.60"


def test_unavailable_provider_fails_over_to_the_other_exactly_once(e2e: E2E) -> None:
    # Given WaveSpeed turns every submission away (503: not taken)
    e2e.faults(FaultPlan(processing_seconds=0.5, submit_error_rate=1.0, submit_error_status=503))
    wavespeed_predictions = len(e2e.stack.simulator.predictions())
    comet_before = len(e2e.stack.comet_simulator.submissions())
    # When a job runs with the default provider
    task = e2e.run("e2e-failover")
    # Then it moved to CometAPI and completed there: one paid task in all, none at WaveSpeed
    assert task.status is TaskStatus.COMPLETED, task.reason
    assert (task.provider, task.failed_over_from) == ("cometapi", "wavespeed")
    assert len(e2e.stack.simulator.predictions()) == wavespeed_predictions
    assert len(e2e.stack.comet_simulator.submissions()) == comet_before + 1
    assert any("failing over to CometAPI" in step.reason for step in task.history)


def test_forged_cometapi_callback_token_is_refused_and_changes_nothing(e2e: E2E) -> None:
    # Given a CometAPI task that completed and was announced
    e2e.run("e2e-forged", options=JobOptions(provider="cometapi"))
    assert len(e2e.notifications("e2e-forged")) == 1
    task = e2e.client.status("e2e-forged").latest
    assert task is not None and task.notified_at is not None
    assert e2e.stack.info is not None
    body = {"task_id": task.provider_task_id, "task_status": "failed", "task_status_msg": "forged"}
    url = f"{e2e.stack.info.webhook_base_url}/webhooks/cometapi"
    # When someone posts a callback with a wrong token, or none
    wrong = httpx.post(url, params={"task_id": task.task_id, "token": "not-the-token"}, json=body)
    missing = httpx.post(url, params={"task_id": task.task_id}, json=body)
    # Then both are refused, and the task is unchanged
    assert (wrong.status_code, missing.status_code) == (401, 401)
    after = e2e.client.status("e2e-forged").latest
    assert after is not None and after.status is TaskStatus.COMPLETED and after.version == task.version


def test_fal_job_with_a_signed_webhook_becomes_a_real_mp4_with_one_notification(e2e: E2E, tmp_path: Path) -> None:
    # When a job asks for fal.ai in its job.json
    fal = e2e.stack.fal_simulator
    before = len(fal.jobs())
    task = e2e.run("e2e-fal", options=JobOptions(provider="fal"))
    # Then fal made it with Kling AI Avatar v2 standard, its Ed25519-signed webhook was accepted (fal's keys read from
    # its key list, over HTTPS), and one notification carries fal's per-second cost
    assert task.status is TaskStatus.COMPLETED, task.reason
    assert task.provider == "fal"
    (job,) = fal.jobs()[before:]
    assert job["model"] == "fal-ai/kling-video/ai-avatar/v2/standard"
    delivered = [d for d in fal.webhook_deliveries() if d["request_id"] == task.provider_task_id]
    assert delivered and delivered[0]["status"] == 200
    info = probe_media(e2e.client.download(task, tmp_path))
    assert info.has_video and info.has_audio and abs(info.duration - e2e.samples.voice_seconds) <= 0.2
    (note,) = e2e.notifications("e2e-fal", settle=4.0)
    assert task.audio_ms is not None
    seconds = math.ceil(task.audio_ms / 1000)  # fal bills per (started) second of the video, as long as the voice
    assert note["body"]["provider"] == "fal"
    expected = (Decimal("0.0562") * seconds).quantize(Decimal("0.01"), rounding=ROUND_CEILING)
    assert note["body"]["estimated_cost_usd"] == str(expected)


@pytest.mark.parametrize("forgery", ["foreign-key", "stale"])
def test_forged_fal_webhooks_are_refused_and_change_nothing(e2e: E2E, forgery: str) -> None:
    # Given a fal task that completed and was announced, and the callback URL fal was given for it (its token)
    fal = e2e.stack.fal_simulator
    job = f"e2e-fal-{forgery}"
    e2e.run(job, options=JobOptions(provider="fal"))
    assert len(e2e.notifications(job)) == 1
    task = e2e.client.status(job).latest
    assert task is not None and task.status is TaskStatus.COMPLETED and task.notified_at is not None
    request_id = task.provider_task_id or ""
    (submitted,) = [j for j in fal.jobs() if j["request_id"] == request_id]
    body = json.dumps({"request_id": request_id, "status": "ERROR", "error": "forged"}).encode()
    # When someone posts a failure for it: signed with a key fal does not publish, or with fal's key 10 minutes ago
    if forgery == "stale":
        headers = fal.webhook_headers(request_id, body, int(time.time()) - 600)
    else:
        headers = fal.webhook_headers(request_id, body, int(time.time()))
        message = webhook_message(request_id, fal.user_id, headers["X-Fal-Webhook-Timestamp"], body)
        headers["X-Fal-Webhook-Signature"] = Ed25519PrivateKey.generate().sign(message).hex()
    answer = httpx.post(submitted["webhook_url"], content=body, headers=headers)
    # Then it is refused, and the task is unchanged
    assert answer.status_code == 401
    after = e2e.client.status(job).latest
    assert after is not None and after.status is TaskStatus.COMPLETED and after.version == task.version


def test_a_fal_key_rotation_is_followed_by_the_webhook(e2e: E2E) -> None:
    # Given fal signs with a new key from now on, and its key list no longer holds the old one
    fal = e2e.stack.fal_simulator
    new_kid = fal.rotate_signing_key(keep_previous=False)
    rotated_at = datetime.now(UTC)
    # and a minute has passed since the webhook last read the key list (it reads it again at most once a minute)
    reads = [datetime.fromisoformat(r["at"]) for r in fal.requests() if r["path"] == JWKS_PATH]
    if reads:
        time.sleep(max(0.0, 61 - (datetime.now(UTC) - reads[-1]).total_seconds()))
    # When a fal job runs
    task = e2e.run("e2e-fal-rotated", options=JobOptions(provider="fal"))
    assert task.status is TaskStatus.COMPLETED, task.reason
    # Then its webhook, signed with the new key, was accepted: the webhook read fal's key list again
    deadline = time.monotonic() + 10
    while not (accepted := [d for d in fal.webhook_deliveries() if d["request_id"] == task.provider_task_id]):
        assert time.monotonic() < deadline, "no webhook delivery for the task"
        time.sleep(0.2)
    assert (accepted[0]["kid"], accepted[0]["status"]) == (new_kid, 200)
    assert any(datetime.fromisoformat(r["at"]) >= rotated_at for r in fal.requests() if r["path"] == JWKS_PATH)

"""End to end through the local stack, per model: each request shape WaveSpeed's models take, a clip over a model's
limit, and a job routed along its list of providers when the first is unavailable.

This module's stack also runs as a deployment given `OpenTelemetryLayerArn` would: every function under the ADOT
layer's wrapper (the local runtime's stand-in, twin/otel_layer.py), its spans written to the stack's traces/."""

from __future__ import annotations

import json
import math
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import pytest
from support.e2e import E2E

from avatar_local.simulators.faults import FaultPlan
from avatar_local.simulators.media import make_sample_portrait, make_sample_speech, probe_media
from avatar_pipeline.domain.models import JobOptions, Task, TaskStatus

pytestmark = pytest.mark.e2e

ADOT_LAYER = "arn:aws:lambda:us-east-1:615299751070:layer:AWSOpenTelemetryDistroPython:29"
STACK_PARAMETERS = {"OpenTelemetryLayerArn": ADOT_LAYER}
# What a signed link or a callback URL would leak into a span.
SECRET_PARTS = ("token=", "X-Amz-Signature", "X-Amz-Credential", "Signature=")


def sent_for(e2e: E2E, job: str) -> list[dict[str, Any]]:
    """What WaveSpeed's simulator was sent for `job` (its input links name the job's folder)."""
    return [r for r in e2e.stack.simulator.submissions() if f"/{job}/" in r["json"]["image"]]


def billed_seconds(task: Task) -> int:
    assert task.audio_ms is not None
    return math.ceil(task.audio_ms / 1000)


def assert_real_video(e2e: E2E, task: Task, tmp_path: Path) -> None:
    info = probe_media(e2e.client.download(task, tmp_path))
    assert info.has_video and info.has_audio and abs(info.duration - e2e.samples.voice_seconds) <= 0.2


@pytest.mark.parametrize(
    ("job", "options", "path", "fields", "title"),
    [
        (
            "e2e-kling-v2",
            JobOptions(model="kling-v2-std", prompt="a calm presenter"),
            "/api/v3/kwaivgi/kling-v2-ai-avatar-standard",
            {"prompt": "a calm presenter"},
            "Kling v2 AI Avatar (standard)",
        ),
        (
            # OmniHuman takes no prompt: the job's is left out, as the task's reason says.
            "e2e-omnihuman",
            JobOptions(model="omnihuman-1.5", prompt="a calm presenter"),
            "/api/v3/bytedance/avatar-omni-human-1.5",
            {},
            "OmniHuman 1.5",
        ),
        (
            "e2e-infinitetalk-720p",
            JobOptions(model="infinitetalk", options={"resolution": "720p", "seed": 7}),
            "/api/v3/wavespeed-ai/infinitetalk",
            {"resolution": "720p", "seed": 7},
            "InfiniteTalk at 720p",
        ),
    ],
    ids=["kling-v2", "omnihuman", "infinitetalk-720p"],
)
def test_each_wavespeed_request_shape_becomes_a_real_mp4_named_and_priced_by_its_model(
    e2e: E2E, tmp_path: Path, job: str, options: JobOptions, path: str, fields: dict[str, Any], title: str
) -> None:
    # When a job names a WaveSpeed model (and its options) in its job.json
    task = e2e.run(job, options=options)
    # Then WaveSpeed was sent one request at the model's path, with exactly the fields that model takes
    assert task.status is TaskStatus.COMPLETED, task.reason
    (sent,) = sent_for(e2e, job)
    assert sent["path"] == path
    assert {name: value for name, value in sent["json"].items() if name not in ("image", "audio")} == fields
    assert_real_video(e2e, task, tmp_path)
    # And the task and its one notification name the model and its estimated cost
    assert (task.provider, task.model) == ("wavespeed", options.model)
    (note,) = e2e.notifications(job, settle=4.0)
    assert (note["body"]["model"], note["body"]["model_title"]) == (options.model, title)
    seconds = billed_seconds(task)
    expected = {
        "kling-v2-std": Decimal("0.28") * math.ceil(seconds / 5),
        "omnihuman-1.5": Decimal("0.16") * seconds,
        "infinitetalk": Decimal("0.06") * max(seconds, 5),
    }[task.model]
    cents = expected.quantize(Decimal("0.01"), rounding=ROUND_CEILING)
    assert note["body"]["estimated_cost_usd"] == task.estimated_cost_usd == str(cents)
    if task.model == "omnihuman-1.5":
        assert any("its prompt is not sent" in step.reason for step in task.history)


def test_a_mask_named_in_job_json_goes_to_infinitetalk_as_a_link_of_its_own(e2e: E2E) -> None:
    # Given a mask uploaded into the job's folder before the pair, and a job.json naming it for InfiniteTalk
    assert e2e.stack.info is not None
    e2e.stack.aws.client("s3").put_object(
        Bucket=e2e.stack.info.bucket, Key="inbox/e2e-mask/face.mask.png", Body=make_sample_portrait()
    )
    # When the pair runs
    task = e2e.run("e2e-mask", options=JobOptions(model="infinitetalk", options={"mask_image": "face.mask.png"}))
    # Then the video was made, and WaveSpeed was sent the mask as a link to it (which it fetched), not as a name
    assert task.status is TaskStatus.COMPLETED, task.reason
    assert task.mask is not None and task.mask.key == "inbox/e2e-mask/face.mask.png"
    (sent,) = sent_for(e2e, "e2e-mask")
    assert "/inbox/e2e-mask/face.mask.png?" in sent["json"]["mask_image"]
    assert sent["json"]["mask_image"].startswith("http")


def test_fals_infinitalk_is_told_the_frames_the_whole_voice_needs(e2e: E2E, tmp_path: Path) -> None:
    # Given an 8 s voice clip: longer than the 145 frames (5.8 s) fal's InfiniTalk makes when not told otherwise
    voice = tmp_path / "voice.mp3"
    voice.write_bytes(make_sample_speech(8.0))
    fal = e2e.stack.fal_simulator
    before = len(fal.jobs())
    # When it is uploaded for InfiniteTalk on fal at 720p
    options = JobOptions(provider="fal", model="infinitetalk", options={"resolution": "720p"})
    e2e.client.submit(e2e.samples.face, voice, "e2e-fal-infinitalk", options)
    task = e2e.client.wait("e2e-fal-infinitalk", 60, interval=0.25)
    # Then fal was asked for the voice's length in frames (25 a second), and the video lasts as long as the voice
    assert task.status is TaskStatus.COMPLETED, task.reason
    (job,) = fal.jobs()[before:]
    assert job["model"] == "fal-ai/infinitalk"
    assert task.audio_ms is not None
    assert job["input"]["num_frames"] == math.ceil(task.audio_ms / 1000 * 25)
    assert job["input"]["resolution"] == "720p" and job["input"]["prompt"]
    info = probe_media(e2e.client.download(task, tmp_path))
    assert abs(info.duration - task.audio_ms / 1000) <= 0.2
    # And it is priced at 720p's doubled rate, $0.40 a second
    (note,) = e2e.notifications("e2e-fal-infinitalk", settle=4.0)
    assert note["body"]["estimated_cost_usd"] == str(Decimal("0.40") * billed_seconds(task))


def test_an_output_path_puts_the_video_where_it_says_and_a_hostile_one_is_refused(e2e: E2E) -> None:
    # When a job asks for its video beside its inputs' layout, and another for one under inbox/
    task = e2e.run("e2e-layout/amy", options=JobOptions(output_path="outputs/{input_dir}/{stem}-{task}.mp4"))
    hostile = e2e.run("e2e-hostile", options=JobOptions(output_path="inbox/{job}/{task}.mp4"), timeout=30)
    # Then the first video is where its template says, and nowhere else
    assert task.status is TaskStatus.COMPLETED, task.reason
    assert task.output is not None and task.output.key == f"outputs/e2e-layout/amy/face-{task.task_id}.mp4"
    assert e2e.stack.info is not None
    s3 = e2e.stack.aws.client("s3")
    assert s3.head_object(Bucket=e2e.stack.info.bucket, Key=task.output.key)["ContentLength"] > 0
    # And the hostile one was refused before anything was sent, saying why
    assert hostile.status is TaskStatus.REJECTED
    assert "it must start with outputs/" in (hostile.reason or "")
    assert not sent_for(e2e, "e2e-hostile")


def test_a_clip_over_its_models_limit_is_rejected_naming_the_model_and_the_limit(e2e: E2E, tmp_path: Path) -> None:
    # Given a 35 s voice clip, and fal's OmniHuman, which takes clips under 30 s at its default 1080p
    voice = tmp_path / "voice.mp3"
    voice.write_bytes(make_sample_speech(35.0))
    fal_jobs = len(e2e.stack.fal_simulator.jobs())
    # When it is uploaded for that model
    e2e.client.submit(e2e.samples.face, voice, "e2e-over-limit", JobOptions(provider="fal", model="omnihuman-1.5"))
    task = e2e.client.wait("e2e-over-limit", 30, interval=0.25)
    # Then it is REJECTED naming the model, its resolution and the limit; nothing went to fal; one notification
    assert task.status is TaskStatus.REJECTED
    assert "the limit is 30 s for OmniHuman 1.5 at 1080p on fal.ai" in (task.reason or ""), task.reason
    assert len(e2e.stack.fal_simulator.jobs()) == fal_jobs
    (note,) = e2e.notifications("e2e-over-limit")
    assert note["attributes"]["status"] == "REJECTED" and "OmniHuman 1.5 at 1080p" in note["body"]["reason"]


def test_a_job_routed_from_an_unavailable_provider_moves_to_the_next_it_lists(e2e: E2E, tmp_path: Path) -> None:
    # Given WaveSpeed turns every submission away (503: not taken), and a job listing WaveSpeed, then fal
    e2e.faults(FaultPlan(processing_seconds=0.5, submit_error_rate=1.0, submit_error_status=503))
    wavespeed_predictions = len(e2e.stack.simulator.predictions())
    fal = e2e.stack.fal_simulator
    fal_before = len(fal.jobs())
    # When the job runs with Kling v2, which both offer
    task = e2e.run("e2e-routed", options=JobOptions(model="kling-v2-std", providers=("wavespeed", "fal")))
    # Then fal made it, once, and WaveSpeed has no prediction of it (none was paid there)
    assert task.status is TaskStatus.COMPLETED, task.reason
    assert (task.provider, task.failed_over_from, task.model) == ("fal", "wavespeed", "kling-v2-std")
    assert [job["model"] for job in fal.jobs()[fal_before:]] == ["fal-ai/kling-video/ai-avatar/v2/standard"]
    assert len(e2e.stack.simulator.predictions()) == wavespeed_predictions
    assert any("failing over to fal.ai" in step.reason for step in task.history)
    assert_real_video(e2e, task, tmp_path)
    # And the one notification names fal, the model, and fal's estimated cost
    (note,) = e2e.notifications("e2e-routed", settle=4.0)
    expected = (Decimal("0.0562") * billed_seconds(task)).quantize(Decimal("0.01"), rounding=ROUND_CEILING)
    assert (note["body"]["provider"], note["body"]["model"]) == ("fal", "kling-v2-std")
    assert note["body"]["estimated_cost_usd"] == str(expected)


def spans_of(e2e: E2E) -> dict[str, list[dict[str, Any]]]:
    """Each function's spans so far, as the local ADOT stand-in wrote them (a JSON object a line)."""
    traces = e2e.stack.config.local_dir / "traces"
    return {
        path.stem.removesuffix("Function"): [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(traces.glob("*.jsonl"))
    }


def url_of(span: dict[str, Any]) -> str:
    """The URL an httpx span called ("" for other spans), under either semantic convention's name."""
    return str(span["attributes"].get("url.full") or span["attributes"].get("http.url") or "")


def test_a_task_can_be_followed_call_by_call_across_the_functions(e2e: E2E) -> None:
    # Given the stack's functions run under the OpenTelemetry layer's wrapper
    # When a job runs to its end
    task = e2e.run("e2e-traced")
    assert task.status is TaskStatus.COMPLETED, task.reason
    e2e.notifications("e2e-traced", settle=4.0)

    # Then each function's calls for the task are spans naming it: the AWS calls of submit, the webhook, finalize
    # and the events function, and the provider calls: the submission to WaveSpeed (by the dispatcher, or by the
    # poller, whose pass starts with the lines, when its tick comes first) and the video's download by finalize
    spans = {name: [s for s in found if s["attributes"].get("avatar.task_id") == task.task_id]
             for name, found in spans_of(e2e).items()}  # fmt: skip
    assert {"Submit", "Webhook", "Finalize", "Events"} <= {name for name, found in spans.items() if found}
    submitted_by = [
        name
        for name in ("Dispatch", "Poller")
        for span in spans.get(name, [])
        if url_of(span).endswith("/api/v3/kwaivgi/kling-v1-ai-avatar-standard")
    ]
    assert len(submitted_by) == 1, submitted_by
    downloads = [url_of(span) for span in spans["Finalize"] if url_of(span).endswith(".mp4")]
    assert [url.startswith(e2e.stack.simulator.base_url) for url in downloads] == [True]
    services = {s["attributes"].get("rpc.service") for found in spans.values() for s in found}
    # (Secrets Manager's too, unless an earlier task's read is still cached)
    assert {"DynamoDB", "S3", "SNS", "EventBridge"} <= services, services
    # And every call of the webhook and of finalize, which work on one task at a time, names a task (their
    # invocations' own spans start before the task is known)
    for name in ("Webhook", "Finalize"):
        calls = [s for s in spans_of(e2e)[name] if s["kind"] != "SpanKind.SERVER"]
        assert calls and all("avatar.task_id" in s["attributes"] for s in calls), name
    # And a copy's parts, uploaded by threads of their own, are in the trace of the invocation that copies
    copy_traces = {s["context"]["trace_id"] for s in spans["Finalize"] if url_of(s).endswith(".mp4")}
    part_traces = {s["context"]["trace_id"] for s in spans["Finalize"] if s["name"] == "S3.UploadPart"}
    assert part_traces and part_traces <= copy_traces
    # And the webhook's invocation spans record the callback's route without its query (its token)
    targets = [s["attributes"].get("http.target") for s in spans_of(e2e)["Webhook"] if s["kind"] == "SpanKind.SERVER"]
    assert targets and set(targets) == {"/webhooks/{provider}"}
    # And no span of any function holds a signed link's signature or a callback's token
    everything = json.dumps(spans_of(e2e))
    assert not [part for part in SECRET_PARTS if part in everything]

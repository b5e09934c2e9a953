"""A mask image for the models that take one (InfiniteTalk on WaveSpeed): a file of the job's folder named
`<any>.mask.png`, named in job.json's options, checked with the pair and sent as a link of its own."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx
from support.corpus import picture, wav
from support.fakes import BUCKET, ScriptedProvider, World, make_world, run_dispatcher, upload

from avatar_pipeline.domain.models import SubmissionRequest, Task, TaskStatus
from avatar_pipeline.domain.pairing import parse_inbox_key
from avatar_pipeline.providers.wavespeed.adapter import WaveSpeedProvider
from avatar_pipeline.services.intake import handle_upload

S = TaskStatus
MASK = picture(400, 500, image_format="PNG")
INFINITETALK = {"model": "infinitetalk", "options": {"mask_image": "face.mask.png"}}


def providers() -> tuple[World, dict[str, ScriptedProvider]]:
    scripted = {name: ScriptedProvider(name) for name in ("wavespeed", "fal")}
    return make_world(provider=scripted["wavespeed"], providers=scripted), scripted


def deliver(w: World, job: str, options: dict[str, Any], mask: bytes | None = MASK) -> Task:
    """job.json, the mask (if any), then the portrait and a 4 s voice clip of job `job` arrive; the task they made."""
    w.media.put_object(BUCKET, f"inbox/{job}/job.json", json.dumps(options))
    if mask is not None:
        w.media.put_object(BUCKET, f"inbox/{job}/face.mask.png", mask)
        assert handle_upload(w.ctx, upload(f"inbox/{job}/face.mask.png", etag="mask", size=len(mask))).action == (
            "ignored"
        )
    clip = wav(4.0)
    w.media.put_object(BUCKET, f"inbox/{job}/voice.wav", clip)
    assert handle_upload(w.ctx, upload(f"inbox/{job}/face.png", etag="img", size=200_000)).action == "waiting"
    outcome = handle_upload(w.ctx, upload(f"inbox/{job}/voice.wav", etag="aud", size=len(clip)))
    task = w.tasks.get(outcome.task_id or "")
    assert task is not None
    return task


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("inbox/amy/face.mask.png", "mask"),
        ("inbox/amy/FACE.MASK.JPG", "mask"),
        ("inbox/amy/face.mask.jpeg", "mask"),
        ("inbox/amy/face.png", "image"),
        ("inbox/amy.mask.png", "image"),  # a same-stem upload has no job.json to name a mask
    ],
)
def test_a_folder_file_named_mask_is_a_mask_not_one_of_the_pair(key: str, kind: str) -> None:
    entry = parse_inbox_key(key)
    assert entry is not None and entry.kind == kind


def test_a_job_with_a_mask_is_checked_with_it_and_sends_it_as_its_own_link() -> None:
    # Given a job for InfiniteTalk on WaveSpeed naming its mask, uploaded before the pair
    w, scripted = providers()
    task = deliver(w, "amy", INFINITETALK)
    # Then the mask was no rival of the portrait: the pair is queued, with the mask as checked
    assert task.status is S.QUEUED, task.reason
    assert task.mask is not None and task.mask.key == "inbox/amy/face.mask.png" and task.mask.size == len(MASK)
    # When the dispatcher sends it
    assert run_dispatcher(w) == {"submit-submitted": 1}
    # Then the request carries a link to the mask, and the options without the file's name
    (request,) = scripted["wavespeed"].submissions
    assert (
        request.mask_url
        == f"https://presigned.test/{BUCKET}/inbox/amy/face.mask.png?expires="
        + (request.mask_url or "").rsplit("=", 1)[-1]
    )
    assert "mask_image" not in request.options
    # And the link is kept out of the request's printed form, as the other links are
    assert "presigned.test" not in repr(request)


@pytest.mark.parametrize(
    ("options", "mask", "reason"),
    [
        (
            INFINITETALK,
            None,
            "options.mask_image names inbox/bob/face.mask.png, which is not there: upload the mask before the pair",
        ),
        (
            {"model": "infinitetalk", "options": {"mask_image": "face.png"}},
            MASK,
            'options.mask_image is "face.png": a mask\'s file name ends in one of .mask.png, .mask.jpg, .mask.jpeg',
        ),
        (INFINITETALK, b"not an image at all", "the mask: face.mask.png"),
        (
            {"model": "infinitetalk", "options": {"mask_image": "../other/face.mask.png"}},
            MASK,
            "WaveSpeed's InfiniteTalk: option \"mask_image\" must name a file in the job's folder",
        ),
        (
            {"options": {"mask_image": "face.mask.png"}},
            MASK,
            'WaveSpeed\'s Kling v1 AI Avatar (standard) has no option "mask_image" (its options: none)',
        ),
    ],
    ids=["missing", "not-named-as-a-mask", "not-an-image", "outside-the-folder", "model-without-a-mask"],
)
def test_a_mask_that_cannot_be_used_rejects_the_pair_unpaid(
    options: dict[str, Any], mask: bytes | None, reason: str
) -> None:
    # Given a job naming a mask that is missing, misnamed, no image, outside its folder, or for a model without one
    w, scripted = providers()
    # When its pair arrives
    task = deliver(w, "bob", options, mask)
    # Then it is REJECTED saying why, and nothing is sent
    assert task.status is S.REJECTED
    assert reason in (task.reason or ""), task.reason
    run_dispatcher(w)
    assert scripted["wavespeed"].submit_count == 0


def test_a_mask_job_never_moves_to_a_provider_whose_model_takes_no_mask() -> None:
    # Given a mask job listing WaveSpeed, then fal (whose InfiniteTalk takes no mask)
    w, _ = providers()
    task = deliver(w, "cy", {**INFINITETALK, "providers": ["wavespeed", "fal"]})
    # Then fal is no failover target, and the task says why
    assert task.status is S.QUEUED and task.failover_targets == ()
    assert 'never moves to fal.ai: fal.ai\'s InfiniteTalk has no option "mask_image"' in (task.reason or "")


def test_a_mask_changed_while_the_pair_waited_is_not_sent() -> None:
    # Given a queued mask job whose mask is then overwritten
    w, scripted = providers()
    task = deliver(w, "dee", INFINITETALK)
    w.media.changed.add((BUCKET, "inbox/dee/face.mask.png"))
    # When the dispatcher comes to it
    run_dispatcher(w)
    # Then it is not sent (what was checked is not what the provider would fetch), and the task says so
    ended = w.tasks.get(task.task_id)
    assert ended is not None and ended.status is S.FAILED
    assert "inbox/dee/face.mask.png changed or was deleted" in (ended.reason or "")
    assert scripted["wavespeed"].submit_count == 0


@respx.mock
def test_wavespeed_is_sent_the_mask_as_its_mask_image_field() -> None:
    # Given WaveSpeed accepts a submission
    route = respx.post("https://api.wavespeed.ai/api/v3/wavespeed-ai/infinitetalk").respond(
        200, json={"code": 200, "message": "success", "data": {"id": "p-1", "status": "created", "outputs": []}}
    )
    request = SubmissionRequest(
        task_id="t-1",
        image_url="https://b.s3/face.png?sig=1",
        audio_url="https://b.s3/voice.wav?sig=2",
        prompt=None,
        model_id="wavespeed-ai/infinitetalk",
        webhook_url="https://hooks.test/webhooks/wavespeed",
        options={"resolution": "720p"},
        mask_url="https://b.s3/face.mask.png?sig=3",
    )
    # When a task with a mask is submitted
    WaveSpeedProvider(api_key="k", webhook_secrets=[], client=httpx.Client()).submit(request)
    # Then the mask's link is the body's mask_image, next to the media and the model's fields
    assert json.loads(route.calls.last.request.content) == {
        "image": "https://b.s3/face.png?sig=1",
        "audio": "https://b.s3/voice.wav?sig=2",
        "mask_image": "https://b.s3/face.mask.png?sig=3",
        "resolution": "720p",
    }

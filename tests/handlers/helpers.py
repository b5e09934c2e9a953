"""Shared moves for the handler tests: put media in the moto bucket and deliver its S3 event."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import boto3
import httpx
import respx
from support.aws import COMETAPI_BASE_URL, REGION, WAVESPEED_BASE_URL, Stack
from support.events import FakeLambdaContext, s3_created

from avatar_local.simulators.media import make_sample_portrait, make_sample_speech

# Real media, as validation reads content: a generated portrait and a 3-second speech-like clip.
PNG_BYTES = make_sample_portrait()
MP3_BYTES = make_sample_speech(3.0)
# Different bytes of the same kinds, for "changed content" cases.
OTHER_PNG_BYTES = make_sample_portrait(width=500, height=660)
OTHER_MP3_BYTES = make_sample_speech(3.5)


def upload(stack: Stack, key: str, body: bytes) -> dict[str, Any]:
    """Store an object as a user would, and return the S3 event AWS would send for it."""
    s3 = boto3.client("s3", region_name=REGION)
    etag = s3.put_object(Bucket=stack.bucket, Key=key, Body=body)["ETag"].strip('"')
    return s3_created(stack.bucket, key, etag, len(body))


def deliver_upload(stack: Stack, key: str, body: bytes) -> dict[str, Any]:
    from submit_handler import lambda_handler

    return lambda_handler(upload(stack, key, body), FakeLambdaContext())


def prediction(prediction_id: str, status: str, outputs: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": prediction_id,
        "model": "kwaivgi/kling-v1-ai-avatar-standard",
        "outputs": outputs or [],
        "urls": {"get": f"{WAVESPEED_BASE_URL}/api/v3/predictions/{prediction_id}/result"},
        "has_nsfw_contents": [],
        "status": status,
        "created_at": "2026-11-21T10:00:00.000000000Z",
        "error": "",
        "timings": {"inference": 0},
        **extra,
    }


def envelope(data: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"code": 200, "message": "success", "data": data})


def mock_wavespeed_submit(router: respx.MockRouter, prediction_id: str = "a" * 32) -> respx.Route:
    return router.post(url__regex=rf"{WAVESPEED_BASE_URL}/api/v3/kwaivgi/kling-v1-ai-avatar-(standard|pro)").mock(
        return_value=envelope(prediction(prediction_id, "created"))
    )


def comet_task(task_id: str, status: str, **extra: Any) -> dict[str, Any]:
    """A CometAPI (Kling) task object, as in its answers' ``data`` and as the body of its callbacks."""
    return {"task_id": task_id, "task_status": status, "created_at": 1748779200000, **extra}


def comet_answer(data: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"code": 0, "message": "SUCCEED", "request_id": "req-1", "data": data})


def mock_cometapi_submit(router: respx.MockRouter, task_id: str) -> respx.Route:
    return router.post(f"{COMETAPI_BASE_URL}/kling/v1/videos/avatar/image2video").mock(
        return_value=comet_answer(comet_task(task_id, "submitted"))
    )


def mock_cometapi_query(router: respx.MockRouter, data: dict[str, Any]) -> respx.Route:
    """CometAPI's answer to our query about the task `data` describes."""
    return router.get(f"{COMETAPI_BASE_URL}/kling/v1/videos/avatar/image2video/{data['task_id']}").mock(
        return_value=comet_answer(data)
    )


def content_hash(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()  # noqa: S324 - S3's ETag for a single PUT is the MD5


def submitted_json(route: respx.Route, call: int = 0) -> dict[str, Any]:
    return json.loads(route.calls[call].request.content)

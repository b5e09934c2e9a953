"""Drives fal's official Python client (``fal-client``) against whatever queue host its environment names.

Run as ``python fal_official_client.py '<json>'`` with ``FAL_QUEUE_RUN_HOST``, ``FAL_KEY`` and ``SSL_CERT_FILE`` set:
fal_client builds ``https://{FAL_QUEUE_RUN_HOST}/`` into a module constant when it is imported, and httpx (which
it uses with its default ``verify=True`` and ``trust_env=True``) trusts ``SSL_CERT_FILE``. A fresh process is the
only clean way to give it a host chosen at run time. The JSON names ``model``, ``arguments``, ``webhook_url`` and
``bad_arguments``; one JSON report goes to stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import fal_client
from fal_client.client import QUEUE_URL_FORMAT

POLL_INTERVAL = 0.02


def describe(event: fal_client.Status) -> dict[str, Any]:
    if isinstance(event, fal_client.Queued):
        return {"type": "Queued", "position": event.position}
    if isinstance(event, fal_client.InProgress):
        return {"type": "InProgress", "logs": event.logs}
    if isinstance(event, fal_client.Completed):
        return {"type": "Completed", "logs": event.logs, "metrics": event.metrics, "error": event.error}
    return {"type": type(event).__name__}


def http_error(call: Any) -> dict[str, Any] | None:
    try:
        call()
    except fal_client.FalClientHTTPError as exc:
        return {"status_code": exc.status_code, "message": exc.message, "error_type": exc.error_type}
    return None


def main() -> None:
    spec = json.loads(sys.argv[1])
    model: str = spec["model"]
    handle = fal_client.submit(model, spec["arguments"], webhook_url=spec["webhook_url"])
    events = [describe(event) for event in handle.iter_events(with_logs=True, interval=POLL_INTERVAL)]
    result = handle.get(interval=POLL_INTERVAL)
    status = fal_client.status(model, handle.request_id, with_logs=True)
    bad = fal_client.submit(model, spec["bad_arguments"])
    report = {
        "queue_url_format": QUEUE_URL_FORMAT,
        "request_id": handle.request_id,
        "urls": {"status": handle.status_url, "response": handle.response_url, "cancel": handle.cancel_url},
        "events": events,
        "result": result,
        "result_again": fal_client.result(model, handle.request_id),
        "status": describe(status),
        "cancel_completed": http_error(lambda: fal_client.cancel(model, handle.request_id)),
        "failed_request": http_error(lambda: bad.get(interval=POLL_INTERVAL)),
        "failed_status": describe(fal_client.status(model, bad.request_id)),
    }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()

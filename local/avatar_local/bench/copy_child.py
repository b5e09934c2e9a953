"""One copy of a provider's video into S3, in a process of its own (its peak RSS is the copy's): run by `finalize_copy`.

    python -m avatar_local.bench.copy_child pipeline|baseline <url> <bucket> <key> <scratch dir>

`pipeline` is finalize's own copy: the handler module imported, the adapters wired from the function's environment
(`wiring.pipeline()`), then `S3MediaStore.copy_from_url`. `baseline` is the plain way: download the URL to a file
with httpx, then boto3's `upload_file` (its default multipart settings). Both print one JSON line.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from avatar_local.bench.common import answer, peak_rss_mib


def pipeline(url: str, bucket: str, key: str) -> dict[str, float]:
    __import__("finalize_handler")  # everything finalize loads, so the RSS is finalize's
    from avatar_pipeline.wiring import pipeline as wired

    ctx = wired()
    before = peak_rss_mib()
    started, cpu_started = time.perf_counter(), time.process_time()
    # Without finalize's lease renewal (a conditional write at most every so often): the copy alone is measured.
    copied = ctx.media.copy_from_url(url, bucket, key, ctx.settings.max_output_bytes, keep_alive=lambda: None)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "bytes": copied.size, "peak_rss_mib": peak_rss_mib(),
            "rss_before_mib": before}  # fmt: skip


def baseline(url: str, bucket: str, key: str, scratch: Path) -> dict[str, float]:
    import boto3
    import httpx
    from botocore.config import Config

    s3 = boto3.client("s3", config=Config(signature_version="s3v4"))
    before = peak_rss_mib()
    path = scratch / f"baseline-{os.getpid()}.mp4"
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        with httpx.stream("GET", url, timeout=120.0) as response, path.open("wb") as file:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                file.write(chunk)
        s3.upload_file(str(path), bucket, key)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        size = path.stat().st_size
    finally:
        path.unlink(missing_ok=True)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "bytes": size, "peak_rss_mib": peak_rss_mib(),
            "rss_before_mib": before}  # fmt: skip


def main(argv: list[str]) -> None:
    mode, url, bucket, key, scratch = argv
    answer(pipeline(url, bucket, key) if mode == "pipeline" else baseline(url, bucket, key, Path(scratch)))


if __name__ == "__main__":
    main(sys.argv[1:])

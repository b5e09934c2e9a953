"""Finalize's copy: a large video from the WaveSpeed simulator (loopback) into the embedded S3, against the plain way
of copying the same bytes (download to a file, then boto3's `upload_file`), and the copying process's peak RSS.

The video is a real MP4 rendered by the simulator's ffmpeg whose `mdat` box is padded to the size wanted (the file
is sparse on disk), so it passes finalize's MP4 structure check. The simulator serves it as a completed prediction's
output, from a process of its own (`video_server`); each copy runs in a fresh process (`copy_child`) with finalize's
environment from template.yaml, so its peak RSS is that copy's alone.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from avatar_local.bench.common import MIB, REGION, Figure, Section, lambda_environment, median, run_child

THROUGHPUT_TARGET = 0.8
RSS_TARGET_MIB = 150.0
FLAT_TARGET = 1.1  # peak RSS of the largest copy over that of the smallest
BUCKET = "avatar-bench-media"
# An unsampled request, as most are under Lambda's default X-Ray sampling: the SDK's patches run, nothing is sent.
UNSAMPLED_TRACE = "Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0"


def padded_mp4(source: bytes, size: int, out: Path) -> None:
    """Write `source` (an MP4) with its `mdat` box grown to make the file `size` bytes; the padding is a hole."""
    offset = 0
    while offset < len(source):
        box_size, kind = struct.unpack_from(">I4s", source, offset)
        if kind == b"mdat":
            break
        if box_size < 8:
            raise ValueError("unsupported box layout")
        offset += box_size
    else:
        raise ValueError("no mdat box")
    if box_size < 8 or offset + box_size > len(source):
        raise ValueError("unsupported mdat box")
    padding = size - len(source)
    if padding < 0 or box_size + padding >= 2**32:
        raise ValueError(f"cannot pad a {len(source)}-byte MP4 to {size} bytes")
    with out.open("wb") as file:
        file.write(source[:offset])
        file.write(struct.pack(">I4s", box_size + padding, b"mdat"))
        file.write(source[offset + 8 : offset + box_size])
        file.seek(padding, os.SEEK_CUR)  # zeros, without writing them
        file.write(source[offset + box_size :])
        file.truncate(size)
    if out.stat().st_size != size:
        raise AssertionError(f"{out} is {out.stat().st_size} bytes, not {size}")


def measure(
    repeats: int, workdir: Path, say: Callable[[str], None], sizes: Sequence[int] = (64 * MIB, 512 * MIB)
) -> Section:
    from avatar_local.simulators.media import make_sample_portrait, make_sample_speech, render_avatar_video
    from avatar_local.twin.aws import EmbeddedAws

    started = time.monotonic()
    small, large = min(sizes), max(sizes)
    section = Section("copy", "2. Finalize copy")
    rendered = workdir / "rendered.mp4"
    render_avatar_video(make_sample_portrait(), make_sample_speech(2.0), rendered)
    videos = []
    for size in sizes:
        videos.append(workdir / f"video-{size // MIB}MiB.mp4")
        padded_mp4(rendered.read_bytes(), size, videos[-1])
    server = subprocess.Popen(  # noqa: S603 - our own interpreter, our own arguments
        [sys.executable, "-m", "avatar_local.bench.video_server", *map(str, videos)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    aws = EmbeddedAws(REGION)
    aws.start()
    try:
        assert server.stdout is not None
        served = json.loads(server.stdout.readline() or "{}")
        if not served:
            raise RuntimeError(f"the video server exited with {server.wait()}")
        urls = dict(zip(sizes, served["urls"], strict=True))
        s3 = aws.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        spec = lambda_environment("FinalizeFunction")
        env = {
            **spec["environment"],
            "AWS_ENDPOINT_URL": aws.endpoint_url,
            "MEDIA_BUCKET": BUCKET,
            "ALLOWED_OUTPUT_HOSTS": served["base_url"],
            "_X_AMZN_TRACE_ID": UNSAMPLED_TRACE,
            "PYTHONPATH": os.pathsep.join([spec["code_dir"], *spec["layer_dirs"]]),
        }
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for number in range(repeats):
            for size in sizes:
                for mode in ("baseline", "pipeline"):
                    key = f"outputs/bench/{mode}-{size}-{number}.mp4"
                    args = ["-m", "avatar_local.bench.copy_child", mode, urls[size], BUCKET, key, str(workdir)]
                    result = run_child(args, env=env, timeout=600)
                    if result["bytes"] != size:
                        raise AssertionError(f"{mode} copied {result['bytes']} bytes of {size}")
                    s3.delete_object(Bucket=BUCKET, Key=key)
                    runs.setdefault((mode, size), []).append(result)
                    say(
                        f"  copy {number + 1}/{repeats} {size // MIB} MiB {mode}: {size / MIB / result['seconds']:.0f} "
                        f"MiB/s, peak RSS {result['peak_rss_mib']:.0f} MiB"
                    )
    finally:
        aws.stop()
        server.communicate(timeout=30)  # closing its stdin stops it

    def throughput(mode: str, size: int) -> float:
        return median([size / MIB / run["seconds"] for run in runs[(mode, size)]])

    def peak(mode: str, size: int, field: str = "peak_rss_mib") -> float:
        return median([run[field] for run in runs[(mode, size)]])

    for size in sorted(sizes, reverse=True):
        value, base = throughput("pipeline", size), throughput("baseline", size)
        section.figures.append(
            Figure(
                section.title,
                f"{size // MIB} MiB copy: throughput",
                value,
                "MiB/s",
                repeats,
                baseline=base,
                baseline_label="download to a file, then boto3 `upload_file`",
                target=f"≥ {THROUGHPUT_TARGET}\u00d7" if size == large else "",
                met=value / base >= THROUGHPUT_TARGET if size == large else None,
            )
        )
    cpu_per_gib = {mode: median([run["cpu_seconds"] for run in runs[(mode, large)]]) * MIB * 1024 / large
                   for mode in ("pipeline", "baseline")}  # fmt: skip
    section.figures.append(
        Figure(
            section.title,
            f"{large // MIB} MiB copy: CPU time of the copying process, per GiB",
            cpu_per_gib["pipeline"],
            "s",
            repeats,
            baseline=cpu_per_gib["baseline"],
            baseline_label="download to a file, then boto3 `upload_file`",
            note="informative: at its 512 MB, Lambda gives a function about a third of a vCPU, so CPU per byte bounds "
            "a copy there more than on this machine",
            decimals=2,
        )
    )
    large_rss, small_rss = peak("pipeline", large), peak("pipeline", small)
    section.figures.append(
        Figure(
            section.title,
            f"{large // MIB} MiB copy: peak RSS",
            large_rss,
            "MiB",
            repeats,
            baseline=small_rss,
            baseline_label=f"the same copy of {small // MIB} MiB",
            target=f"≤ {RSS_TARGET_MIB:.0f} MiB, ≤ {FLAT_TARGET}\u00d7",
            met=large_rss <= RSS_TARGET_MIB and large_rss / small_rss <= FLAT_TARGET,
            note=f"the baseline copy's process peaked at {peak('baseline', large):.0f} MiB",
        )
    )
    section.figures.append(
        Figure(
            section.title,
            f"{small // MIB} MiB copy: peak RSS",
            small_rss,
            "MiB",
            repeats,
            baseline=peak("pipeline", small, "rss_before_mib"),
            baseline_label="the same process before the copy (finalize imported, wired)",
            target=f"≤ {RSS_TARGET_MIB:.0f} MiB",
            met=small_rss <= RSS_TARGET_MIB,
        )
    )
    section.method = (
        f"A real MP4 rendered by the simulator's ffmpeg, its `mdat` padded to {small // MIB} and {large // MIB} MiB, "
        f"served by the WaveSpeed simulator on 127.0.0.1 in a process of its own (as the provider's CDN and S3 are not "
        f"one server, a download and the uploads beside it must not share one interpreter); the embedded S3 (moto "
        f"server) in the parent process. "
        f"Each copy in a fresh process with finalize's environment from template.yaml: the pipeline imports "
        f"`finalize_handler`, wires the adapters and calls `S3MediaStore.copy_from_url` (allow-list: the simulator's "
        f"origin); the baseline streams the download to a file with httpx, then `upload_file` (boto3's default "
        f"transfer settings: 8 MiB parts, 10 threads). {repeats} rounds of baseline then pipeline at each size; "
        f"peak RSS: the process's VmHWM."
    )
    section.seconds = time.monotonic() - started
    return section

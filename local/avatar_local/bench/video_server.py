"""The WaveSpeed simulator serving completed predictions' videos, in a process of its own: run by `finalize_copy`.

    python -m avatar_local.bench.video_server <video>...

Prints one JSON line (the simulator's origin and each video's output URL), then serves until its stdin closes. Apart
from the embedded S3's process, a copy that downloads while it uploads does not have the two servers contend for one
interpreter, as the provider's CDN and S3 do not.
"""

from __future__ import annotations

import sys
from pathlib import Path

from avatar_local.bench.common import answer


def main(videos: list[str]) -> None:
    from avatar_local.simulators.wavespeed import WaveSpeedSimulator

    simulator = WaveSpeedSimulator().start()
    try:
        urls = [simulator.add_completed(Path(video))["outputs"][0] for video in videos]
        answer({"base_url": simulator.base_url, "urls": urls})
        sys.stdin.read()  # until the parent closes it
    finally:
        simulator.stop()


if __name__ == "__main__":
    main(sys.argv[1:])

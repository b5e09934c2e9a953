"""What a cold start loads: media decoding (Pillow, mutagen) only once a pair is complete, never in the callbacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEDIA_MODULES = ("PIL", "mutagen", "avatar_pipeline.domain.validation", "avatar_pipeline.domain.media_checks")
_LOADED_AFTER_IMPORT = """
import json, sys
sys.path[:0] = json.loads(sys.argv[2])
__import__(sys.argv[1])
print(json.dumps(sorted(name for name in json.loads(sys.argv[3]) if name in sys.modules)))
"""


@pytest.mark.parametrize("function", ["submit", "webhook", "poller", "finalize"])
def test_importing_a_handler_loads_no_media_decoders(function: str) -> None:
    # Given a fresh interpreter with the function's code and the shared layer on its path
    paths = [str(ROOT / "functions" / function), str(ROOT / "layers" / "shared")]

    # When the handler module is imported, as at a cold start
    result = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [
            sys.executable,
            "-c",
            _LOADED_AFTER_IMPORT,
            f"{function}_handler",
            json.dumps(paths),
            json.dumps(MEDIA_MODULES),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"POWERTOOLS_SERVICE_NAME": "avatar-pipeline", "AWS_DEFAULT_REGION": "us-east-1", "PATH": "/usr/bin"},
    )

    # Then none of the media decoders was loaded
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []

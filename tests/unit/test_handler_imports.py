"""What a cold start loads: nothing a handler's import does not need. Media decoding (Pillow, mutagen) only once a pair
is complete, never in the callbacks; outgoing HTTP (httpx), storage and notification adapters only on the paths that
use them; no tracing SDK (Lambda traces invocations itself; OpenTelemetry only under the ADOT layer's wrapper); none
of Powertools' heavier utilities (the event handler's routers, the batch utility and its parser models)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_AT_IMPORT = (
    # media decoding
    "PIL",
    "mutagen",
    "avatar_pipeline.domain.validation",
    "avatar_pipeline.domain.media_checks",
    # outgoing HTTP and the adapters built on first use
    "httpx",
    "httpcore",
    "avatar_pipeline.adapters.s3",
    "avatar_pipeline.adapters.safe_download",
    "avatar_pipeline.adapters.sns",
    "avatar_pipeline.adapters.wakeups",
    # tracing SDKs
    "aws_xray_sdk",
    "opentelemetry",
    # Powertools utilities the handlers do without
    "aws_lambda_powertools.event_handler",
    "aws_lambda_powertools.utilities.batch",
    "aws_lambda_powertools.utilities.parser",
)
HANDLERS = ("submit", "webhook", "poller", "finalize", "dispatch", "events")
_LOADED_AFTER_IMPORT = """
import json, sys
sys.path[:0] = json.loads(sys.argv[2])
__import__(sys.argv[1])
print(json.dumps(sorted(name for name in json.loads(sys.argv[3]) if name in sys.modules)))
"""


@pytest.mark.parametrize("function", HANDLERS)
def test_importing_a_handler_loads_nothing_it_does_not_need(function: str) -> None:
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
            json.dumps(NOT_AT_IMPORT),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"POWERTOOLS_SERVICE_NAME": "avatar-pipeline", "AWS_DEFAULT_REGION": "us-east-1", "PATH": "/usr/bin"},
    )

    # Then none of those modules was loaded
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []

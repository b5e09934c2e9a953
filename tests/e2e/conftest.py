"""One local stack for the end-to-end tests: embedded AWS, the WaveSpeed simulator and the template's functions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.e2e import E2E, Samples

from avatar_cli.client import PipelineClient, StackTarget
from avatar_local.simulators.faults import FaultPlan
from avatar_local.simulators.media import make_sample_portrait, make_sample_speech
from avatar_local.twin.stack import LocalStack, LocalStackConfig

# Fast settings for tests: the poller runs every second and chases tasks after 5 s without news.
E2E_PARAMETERS = {
    "PollAfterSeconds": "5",
    "MaxPairWaitSeconds": "600",
    "MaxProviderQueueSeconds": "900",
    "MaxRenderSeconds": "900",
}
QUICK = FaultPlan(processing_seconds=0.5)


# Module-scoped: moto's server shares its backends with the in-process mocks other tests start, so the stack must be
# gone before they run. Each module's stack has its own name: moto's backends outlive a stack, so a second stack of
# the same name would meet the first one's tables.
@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[E2E]:
    state = tmp_path_factory.mktemp("local-stack")
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    # A module may set parameters of its own (STACK_PARAMETERS), over the fast ones.
    parameters = E2E_PARAMETERS | getattr(request.module, "STACK_PARAMETERS", {})
    config = LocalStackConfig(
        stack_name=f"e2e-{module}", state_dir=state, parameters=parameters, poll_interval_seconds=1.0, faults=QUICK
    )
    stack = LocalStack(config)
    info = stack.start()
    samples_dir = state / "samples"
    samples_dir.mkdir()
    samples = Samples(samples_dir / "face.png", samples_dir / "voice.mp3", 3.0)
    samples.face.write_bytes(make_sample_portrait())
    samples.voice.write_bytes(make_sample_speech(samples.voice_seconds))
    target = StackTarget(
        bucket=info.bucket, table=info.table, region=info.region, aws_endpoint_url=info.aws_endpoint_url
    )
    try:
        yield E2E(stack, PipelineClient(target), samples)
    finally:
        stack.stop()


@pytest.fixture(autouse=True)
def _quick_provider(e2e: E2E) -> None:
    """Each test starts from a provider without faults (a test sets its own)."""
    e2e.faults(QUICK)

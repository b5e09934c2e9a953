"""wiring.on_first_use: an adapter is built when an invocation first uses it, once, and a failed build is retried."""

from __future__ import annotations

import copy
import threading
import time

import pytest

from avatar_pipeline.wiring import on_first_use


class Adapter:
    def __init__(self) -> None:
        self.calls = 0

    def call(self) -> str:
        self.calls += 1
        return "answer"


def test_an_adapter_is_built_on_first_use_and_only_once() -> None:
    # Given an adapter whose build is counted
    builds: list[Adapter] = []
    adapter = on_first_use(lambda: builds.append(Adapter()) or builds[-1])
    # When nothing uses it, then it is not built
    assert builds == []
    # When it is used twice, then it was built once and both calls reached that one
    assert (adapter.call(), adapter.call()) == ("answer", "answer")
    assert len(builds) == 1 and builds[0].calls == 2


def test_a_build_that_fails_is_tried_again_on_the_next_use() -> None:
    # Given an adapter whose first build fails (say, the SDK could not load a service model)
    attempts: list[int] = []

    def build() -> Adapter:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("no service model")
        return Adapter()

    adapter = on_first_use(build)
    # When it is used, then the failure reaches the caller
    with pytest.raises(RuntimeError, match="no service model"):
        adapter.call()
    # And when it is used again, then it is built this time
    assert adapter.call() == "answer" and len(attempts) == 2


def test_threads_using_an_adapter_first_at_once_build_it_once() -> None:
    # Given a slow build, and eight threads using the adapter at the same moment
    builds: list[int] = []

    def build() -> Adapter:
        builds.append(1)
        time.sleep(0.05)
        return Adapter()

    adapter = on_first_use(build)
    start = threading.Barrier(8)
    answers: list[str] = []

    def use() -> None:
        start.wait()
        answers.append(adapter.call())

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then it was built once, and every thread got its answer
    assert len(builds) == 1 and answers == ["answer"] * 8


def test_private_names_and_copies_build_nothing() -> None:
    # Given an adapter not used yet
    builds: list[int] = []
    adapter = on_first_use(lambda: builds.append(1) or Adapter())
    # When something probes it for a private name, or copies it (as copy and pickle do)
    assert not hasattr(adapter, "_anything")
    copy.copy(adapter)
    # Then nothing was built: only the adapter's interface is handed over
    assert builds == []

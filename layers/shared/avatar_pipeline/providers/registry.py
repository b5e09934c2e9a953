"""The providers this pipeline can send work to: every other part reads them from here.

Adding a provider is a folder of its own (`providers/<name>/`: its `SPEC` and its adapter) and one line below.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from avatar_pipeline.domain.redaction import mask_secrets
from avatar_pipeline.providers import cometapi, fal, wavespeed
from avatar_pipeline.providers.spec import ModelSpec, OptionValue, ProviderSpec

if TYPE_CHECKING:
    from avatar_pipeline.domain.models import ProviderJob


class ProviderRegistry(Mapping[str, ProviderSpec]):
    """Provider specs by name, in the order they were registered (the order failover and spill-over try them)."""

    def __init__(self, *specs: ProviderSpec) -> None:
        self._specs: dict[str, ProviderSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ProviderSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"a provider called {spec.name!r} is registered already")
        self._specs[spec.name] = spec

    @contextmanager
    def registered(self, spec: ProviderSpec, *, replacing: bool = False) -> Iterator[ProviderSpec]:
        """`spec` registered for the duration of the block (a test's provider, or a changed fact of a known one, in
        its place, when `replacing`), and the registry as it was afterwards."""
        before = dict(self._specs)
        if replacing:
            if spec.name not in self._specs:
                raise KeyError(f"no provider called {spec.name!r} to replace")
            self._specs[spec.name] = spec
        else:
            self.register(spec)
        try:
            yield spec
        finally:
            self._specs = before

    def __getitem__(self, name: str) -> ProviderSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def model(self, provider: str, name: str) -> ModelSpec:
        return self[provider].model(name)

    def model_names(self) -> tuple[str, ...]:
        """Every model some provider offers, by name, in the order the providers list them."""
        return tuple(dict.fromkeys(name for spec in self._specs.values() for name in spec.models))

    def offering(self, model: str) -> tuple[str, ...]:
        """The providers that offer `model`, in registry order."""
        return tuple(name for name, spec in self._specs.items() if model in spec.models)

    def others(self, provider: str, model: str | None = None) -> tuple[str, ...]:
        """The providers a task of `provider` could move to (those offering its `model`, when given), in the order
        they are tried."""
        return tuple(
            name for name, spec in self._specs.items() if name != provider and (model is None or model in spec.models)
        )


PROVIDERS = ProviderRegistry(
    wavespeed.SPEC,
    cometapi.SPEC,
    fal.SPEC,
)


def display_name(provider: str) -> str:
    return PROVIDERS[provider].display_name if provider in PROVIDERS else provider


def describe_model(provider: str, model: str, options: Mapping[str, OptionValue]) -> str:
    """The model as people read it, with the resolution it renders at: "InfiniteTalk at 720p"."""
    spec = PROVIDERS[provider].models.get(model) if provider in PROVIDERS else None
    if spec is None:
        return model
    resolution = spec.resolution(options)
    return f"{spec.title} at {resolution}" if resolution else spec.title


def describe_failure(provider: str, job: ProviderJob) -> str:
    """A provider-reported failure as a task's reason (and a notification's text): the provider's words, masked,
    since they may echo our signed input URLs or callback token back."""
    code = f" (code {mask_secrets(job.error_code)})" if job.error_code else ""
    message = mask_secrets(job.error_message or "") or "no reason given"
    return f"{display_name(provider)} could not make the video{code}: {message}"

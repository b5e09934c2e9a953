"""Failures the domain tells apart, because each one is handled differently."""


class PipelineError(Exception):
    """Base class for every failure the pipeline recognises."""


class InputGoneError(PipelineError):
    """An uploaded file was deleted or replaced before it could be checked: its event no longer describes it."""


class ProviderError(PipelineError):
    """A provider call did not give a usable answer."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ProviderInputError(ProviderError):
    """The provider refused the inputs (WaveSpeed 1xxx): fix the input; never retried."""


class ProviderTransientError(ProviderError):
    """Rate limit, outage or timeout (429, 5xx, WaveSpeed 5xxx): retry later, the request was not taken."""

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        # The provider's Retry-After hint in seconds, if it gave one.
        self.retry_after = retry_after

    @property
    def is_rate_limit(self) -> bool:
        return self.code == "429"


class ProviderConfigError(ProviderError):
    """Our credentials or configuration are wrong (401/403): retrying cannot help."""


class ProviderOutcomeUnknownError(ProviderError):
    """The request may or may not have been taken (e.g. a read timeout): never re-POST a submit blindly."""


class WebhookAuthError(PipelineError):
    """A callback whose signature, token or timestamp does not check out."""


class WebhookPayloadError(PipelineError):
    """A callback whose body cannot be understood."""


class CallbackMismatchError(PipelineError):
    """An authentic callback that does not belong to the task it was addressed to."""


class DeliveryInProgressError(PipelineError):
    """Another delivery of the same callback is being processed right now: the provider should retry this one."""


class OutputUnusableError(PipelineError):
    """The provider's output cannot become a video in our bucket (gone, not an MP4, too large)."""


class OutputCopyInterruptedError(PipelineError):
    """The copy of the output broke off (truncated download, network): worth another attempt."""

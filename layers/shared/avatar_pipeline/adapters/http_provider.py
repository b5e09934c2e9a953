"""What both provider adapters share: the bearer key, one httpx client, and retries of transient errors only."""

from __future__ import annotations

from typing import ClassVar

import httpx
from pydantic import ValidationError

from avatar_pipeline.adapters.http_retry import RetryPolicy, call_with_retry
from avatar_pipeline.domain.errors import ProviderConfigError, ProviderInputError
from avatar_pipeline.domain.models import ProviderJob, SubmissionRequest
from avatar_pipeline.domain.redaction import mask_secrets
from avatar_pipeline.providers.spec import OptionValue


def summarise(exc: ValidationError) -> str:
    """A provider answer's validation errors, one line: where, and what was wrong (quoted as all provider text is)."""
    return mask_secrets("; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in exc.errors()))


def with_model_fields(
    inputs: dict[str, OptionValue], request: SubmissionRequest, action: str
) -> dict[str, OptionValue]:
    """A request body: our own inputs (media, prompt, callback) and the model's fields, which never replace one of
    ours (the model's options are checked against its spec before anything is queued, so this is a spec's error)."""
    clash = inputs.keys() & request.options.keys()
    if clash:
        raise ProviderInputError(f"{action}: option {sorted(clash)[0]!r} would replace the request's own input")
    return {**inputs, **request.options}


class HttpProvider:
    """Base of the provider adapters: subclasses say how one submit and one fetch go (`_submit_once`,
    `_fetch_once`); this class retries them on `ProviderTransientError` only — answers proving the request was not
    taken — so a submit whose outcome is unknown is never sent twice."""

    display_name: ClassVar[str]

    def __init__(
        self,
        api_key: str,
        base_url: str,
        client: httpx.Client | None,
        retry: RetryPolicy | None,
        timeout: httpx.Timeout,
    ) -> None:
        # No key: an adapter that only checks callbacks (the webhook function is not given the paid API key).
        self._has_key = bool(api_key)
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._base_url = base_url.rstrip("/")
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)
        self._retry = retry if retry is not None else RetryPolicy()

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(base_url={self._base_url!r})"

    def close(self) -> None:
        """Close the HTTP client if this provider created it."""
        if self._owns_client:
            self._client.close()

    def submit(self, request: SubmissionRequest) -> ProviderJob:
        """Create the provider's task. Retries only answers that prove the request was not taken, and not a rate limit
        answer: the dispatcher paces submissions by the account's quota, and a 429 pauses it rather than us."""
        self._require_key()
        return call_with_retry(
            lambda: self._submit_once(request),
            self._retry,
            description=f"{self.display_name} submit",
            retry_rate_limits=False,
        )

    def fetch(self, provider_task_id: str) -> ProviderJob:
        """The provider's task as it stands now."""
        if not provider_task_id:
            raise ValueError("provider_task_id is empty")
        self._require_key()
        return call_with_retry(
            lambda: self._fetch_once(provider_task_id), self._retry, description=f"{self.display_name} fetch"
        )

    def _require_key(self) -> None:
        if not self._has_key:
            raise ProviderConfigError(f"this function holds no {self.display_name} API key")

    def _submit_once(self, request: SubmissionRequest) -> ProviderJob:
        raise NotImplementedError

    def _fetch_once(self, provider_task_id: str) -> ProviderJob:
        raise NotImplementedError

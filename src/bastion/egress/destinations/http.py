"""The HTTP destination: each file PUT to ``{url}/{flow}/{manifest_id}/{name}``, COMPLETE last.

Every PUT carries ``Idempotency-Key: <manifest_id>/<name>`` and, when the flow names a
``token_env``, ``Authorization: Bearer <that variable's value>`` (read at delivery time, never
stored or logged). The receiver (``http_receiver``) stages files and makes the delivery whole
only when COMPLETE arrives with every file it needs, so a delivery cut short is a staging area
that the retry's PUTs overwrite with the same bytes: one copy. ``delivered`` asks for the
COMPLETE file (GET, 200 or 404).

Every request is bounded (``timeout_s``; connecting at most 5 s). A refused connection, a
timeout, a 5xx or a 429 is :class:`DestinationUnavailable` (the runner retries the run later);
a 401/403 or another 4xx is a ConfigError (a retry would fail the same way).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import httpx

from bastion.egress.destinations.common import (
    COMPLETE,
    DestinationUnavailable,
    check_flow,
    check_manifest_id,
    layout,
)
from bastion.errors import ConfigError

if TYPE_CHECKING:
    from bastion.egress.delivery import Delivery


class HttpDestination:
    name = "http"

    def __init__(
        self,
        url: str,
        *,
        token_env: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token_env = token_env
        self.timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
        self._transport = transport

    def __repr__(self) -> str:
        return f"HttpDestination({self.url!r})"

    def _client(self) -> httpx.Client:
        headers = {}
        if self.token_env is not None:
            token = os.environ.get(self.token_env)
            if not token:
                raise ConfigError(
                    f"the HTTP destination's token_env names {self.token_env}, which is not set"
                )
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(
            timeout=self.timeout,
            headers=headers,
            follow_redirects=False,  # a redirect could carry the token elsewhere
            transport=self._transport,
        )

    def _file_url(self, flow: str, manifest_id: str, name: str) -> str:
        return f"{self.url}/{check_flow(flow)}/{check_manifest_id(manifest_id)}/{name}"

    def deliver(self, delivery: Delivery) -> None:
        files = layout(delivery)
        with self._client() as client:
            if self._is_complete(client, delivery.flow, delivery.manifest_id):
                return
            for name, data in files:
                self._put(client, delivery, name, data)

    def delivered(self, flow: str, manifest_id: str) -> bool:
        with self._client() as client:
            return self._is_complete(client, flow, manifest_id)

    def _put(self, client: httpx.Client, delivery: Delivery, name: str, data: bytes) -> None:
        url = self._file_url(delivery.flow, delivery.manifest_id, name)
        response = self._request(
            client,
            "PUT",
            url,
            content=data,
            headers={
                "Idempotency-Key": f"{delivery.manifest_id}/{name}",
                "Content-Type": "application/octet-stream",
            },
        )
        if not response.is_success:
            self._refused(response, f"PUT {name}")

    def _is_complete(self, client: httpx.Client, flow: str, manifest_id: str) -> bool:
        response = self._request(client, "GET", self._file_url(flow, manifest_id, COMPLETE))
        if response.status_code == 404:
            return False
        if not response.is_success:
            self._refused(response, f"GET {COMPLETE}")
        return True

    def _request(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            return client.request(method, url, content=content, headers=headers)
        except httpx.TransportError as exc:  # refused, reset, timed out, TLS failure
            raise DestinationUnavailable(
                f"the HTTP destination {self.url} could not be reached ({type(exc).__name__})"
            ) from None

    def _refused(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        # The receiver's detail is a short reason it chose; the body is never a payload.
        detail = response.text[:200].replace("\n", " ")
        message = f"the HTTP destination {self.url} answered {status} to {what}: {detail}"
        if status >= 500 or status == 429:
            raise DestinationUnavailable(message)
        raise ConfigError(message)

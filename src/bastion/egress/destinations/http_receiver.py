"""A recipient's HTTP endpoint for the HTTP destination: it writes the delivery layout
(``<root>/<flow>/<manifest_id>/...``) into a directory, atomically, as the directory
destination does.

    PUT /{flow}/{manifest_id}/{name}   a file of a delivery (staged; 201)
    PUT /{flow}/{manifest_id}/COMPLETE the marker: 201 once every file it needs is staged
                                       (the staging directory is renamed into place);
                                       409 if a file is missing
    GET /{flow}/{manifest_id}/{name}   a file of a complete delivery (404 otherwise)

A PUT to a complete delivery with the same bytes is 200 (a retry), with other bytes 409:
nothing delivered is ever overwritten. Names are the layout's only (``check_layout``), so no
request can write outside its delivery's directory; each body is bounded by the size its
file may have (413). With a token, every request needs ``Authorization: Bearer <token>``
(compared in constant time). ``bastion egress verify`` then checks what arrived, offline.

It imports no server code: a recipient runs it with :func:`run_receiver`.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from bastion.egress.delivery import (
    COMPLETE_FILE,
    REQUIRED_FILES,
    check_layout,
    max_bytes,
)
from bastion.egress.destinations.common import check_flow, check_manifest_id
from bastion.egress.destinations.files import (
    commit,
    final_dir,
    is_complete,
    staged_names,
    write_staged,
)
from bastion.egress.errors import EgressRejected
from bastion.errors import InputError

_CHUNK = re.compile(r"chunk-[0-9]{5}\.hpke")


def _check_name(name: str) -> str:
    if name in (*REQUIRED_FILES, COMPLETE_FILE) or _CHUNK.fullmatch(name):
        return name
    raise HTTPException(404, f"{name!r} is not a file of a delivery")


def _ids(flow: str, manifest_id: str) -> None:
    try:
        check_flow(flow)
        check_manifest_id(manifest_id)
    except InputError as exc:
        raise HTTPException(404, str(exc)) from None


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"larger than the {limit} bytes this file may have")
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            raise HTTPException(413, f"larger than the {limit} bytes this file may have")
    return bytes(data)


def _store(root: Path, flow: str, manifest_id: str, name: str, data: bytes) -> int:
    """Stage one file (or commit, for COMPLETE); the HTTP status to answer."""
    if is_complete(root, flow, manifest_id):
        path = final_dir(root, flow, manifest_id) / name
        if path.is_file() and path.read_bytes() == data:
            return 200
        raise HTTPException(409, f"delivery {manifest_id} is complete; {name} differs from it")
    if name != COMPLETE_FILE:
        write_staged(root, flow, manifest_id, name, data)
        return 201
    staged = staged_names(root, flow, manifest_id)
    try:
        layout = check_layout([*staged, COMPLETE_FILE])
    except EgressRejected as exc:
        raise HTTPException(409, f"COMPLETE before the delivery is whole: {exc.detail}") from None
    marker = data.decode("ascii", "replace").split()
    if marker[:1] != [manifest_id] or marker[1:2] != [str(layout.chunks)]:
        raise HTTPException(409, f"COMPLETE does not name {manifest_id} and its chunks")
    write_staged(root, flow, manifest_id, name, data)
    try:
        commit(root, flow, manifest_id)
    except OSError:
        if not is_complete(root, flow, manifest_id):  # not a racing COMPLETE that won
            raise
        return 200
    return 201


def create_receiver_app(root: Path, *, token: str | None = None) -> FastAPI:
    """The receiving endpoint, writing under ``root``. ``token``: the bearer token required."""
    app = FastAPI(title="Bastion egress receiver", docs_url=None, redoc_url=None)
    expected = f"Bearer {token}".encode() if token else None

    def authorize(authorization: str | None) -> None:
        if expected is None:
            return
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise HTTPException(401, "a valid bearer token is required")

    @app.put("/{flow}/{manifest_id}/{name}", status_code=201)
    async def put_file(
        flow: str,
        manifest_id: str,
        name: str,
        request: Request,
        response: Response,
        authorization: Annotated[str | None, Header()] = None,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> dict[str, str]:
        authorize(authorization)
        _ids(flow, manifest_id)
        _check_name(name)
        if idempotency_key is not None and idempotency_key != f"{manifest_id}/{name}":
            raise HTTPException(400, "the Idempotency-Key is not <manifest_id>/<name>")
        data = await _body(request, max_bytes(name))
        response.status_code = await run_in_threadpool(_store, root, flow, manifest_id, name, data)
        return {"manifest_id": manifest_id, "file": name}

    @app.get("/{flow}/{manifest_id}/{name}")
    def get_file(
        flow: str,
        manifest_id: str,
        name: str,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        authorize(authorization)
        _ids(flow, manifest_id)
        _check_name(name)
        path = final_dir(root, flow, manifest_id) / name
        if not is_complete(root, flow, manifest_id) or not path.is_file():
            raise HTTPException(404, "no such file in a complete delivery")
        return Response(path.read_bytes(), media_type="application/octet-stream")

    return app


def run_receiver(
    root: Path, *, host: str = "127.0.0.1", port: int = 8470, token: str | None = None
) -> None:
    """Serve :func:`create_receiver_app` (blocking) until interrupted."""
    import uvicorn

    root.mkdir(parents=True, exist_ok=True)
    uvicorn.run(create_receiver_app(root, token=token), host=host, port=port, log_level="warning")

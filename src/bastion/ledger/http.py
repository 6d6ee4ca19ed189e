"""The C2SP tlog-tiles read API under ``/log/``, plus inclusion proofs.

- ``GET /log/checkpoint``: the newest published checkpoint (``text/plain; charset=utf-8``),
  not cacheable beyond a few seconds.
- ``GET /log/tile/<L>/<N>[.p/<W>]`` and ``GET /log/tile/entries/<N>[.p/<W>]``: tiles and entry
  bundles (``application/octet-stream``). A tile of a given width never changes, so every 200
  is ``immutable``; anything not covered by a published checkpoint is a 404.
- ``GET /log/proof/<index>``: an inclusion proof against the published checkpoint, as JSON, or
  as an offline C2SP tlog-proof with ``?format=tlog-proof``.

Handlers are plain functions, so FastAPI runs their database reads on its thread pool.
"""

from __future__ import annotations

import base64
import gzip
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from bastion.errors import InputError, LedgerUnavailable
from bastion.ledger.merkle import leaf_hash
from bastion.ledger.reader import LogReader
from bastion.ledger.tiles import TilePathError, parse_entries_path, parse_tile_path

OCTET = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"
IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "no-cache, max-age=0"


def _not_found(what: str) -> PlainTextResponse:
    return PlainTextResponse(
        f"{what} is not covered by a published checkpoint\n",
        status_code=404,
        headers={"Cache-Control": SHORT},
    )


def _bad_path(exc: TilePathError) -> PlainTextResponse:
    return PlainTextResponse(f"{exc}\n", status_code=400, headers={"Cache-Control": SHORT})


def log_router(reader: LogReader) -> APIRouter:
    router = APIRouter(prefix="/log", tags=["transparency log"])

    @router.get(
        "/checkpoint",
        response_class=PlainTextResponse,
        summary="The newest signed (and witness-cosigned) checkpoint (C2SP tlog-checkpoint).",
    )
    def checkpoint() -> Response:
        try:
            note = reader.checkpoint_note()
        except LedgerUnavailable as exc:
            return PlainTextResponse(f"{exc}\n", status_code=503, headers={"Cache-Control": SHORT})
        return Response(note, media_type=TEXT, headers={"Cache-Control": SHORT})

    @router.get(
        "/tile/{path:path}",
        response_class=Response,
        summary="A Merkle tile or an entry bundle (C2SP tlog-tiles, height 8).",
        responses={200: {"content": {OCTET: {}}}, 404: {}, 400: {}},
    )
    def tile(path: str, request: Request) -> Response:
        full_path = "tile/" + path
        try:
            if path.startswith("entries/"):
                index, width = parse_entries_path(full_path)
                data = reader.entry_bundle(index, width)
                if data is None:
                    return _not_found(full_path)
                headers = {"Cache-Control": IMMUTABLE, "Vary": "Accept-Encoding"}
                # Entry bundles SHOULD be compressed at the HTTP layer (tlog-tiles).
                if "gzip" in request.headers.get("accept-encoding", ""):
                    data = gzip.compress(data, compresslevel=1, mtime=0)
                    headers["Content-Encoding"] = "gzip"
                return Response(data, media_type=OCTET, headers=headers)
            level, index, width = parse_tile_path(full_path)
        except TilePathError as exc:
            return _bad_path(exc)
        data = reader.tile(level, index, width)
        if data is None:
            return _not_found(full_path)
        return Response(data, media_type=OCTET, headers={"Cache-Control": IMMUTABLE})

    @router.get(
        "/proof/{index}",
        summary="Inclusion proof of an entry against the published checkpoint.",
        responses={
            200: {"content": {"application/json": {}, TEXT: {}}},
            404: {"description": "Not yet covered by a published checkpoint."},
        },
    )
    def proof(
        index: int,
        format: Literal["json", "tlog-proof"] = Query("json"),
    ) -> Response:
        if index < 0:
            return JSONResponse({"error": "index must be non-negative"}, status_code=400)
        try:
            cp, entry, hashes = reader.proof(index)
        except (LedgerUnavailable, InputError) as exc:
            return JSONResponse(
                {"error": "not-found", "message": str(exc)},
                status_code=404,
                headers={"Cache-Control": SHORT},
            )
        if format == "tlog-proof":
            return Response(
                reader.proof_bundle(index), media_type=TEXT, headers={"Cache-Control": SHORT}
            )
        return JSONResponse(
            {
                "index": index,
                "tree_size": cp.tree_size,
                "leaf_hash": leaf_hash(entry).hex(),
                "entry": base64.b64encode(entry).decode(),
                "inclusion_proof": [base64.b64encode(h).decode() for h in hashes],
                "root_hash": cp.root_hash.hex(),
                "checkpoint": cp.text,
            },
            headers={"Cache-Control": SHORT},
        )

    return router

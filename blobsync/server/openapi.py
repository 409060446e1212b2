"""The OpenAPI 3 description of the public API, served at ``GET /openapi.json``.

tests/server/test_openapi.py keeps it true: every route of the app is here with its methods
and every route here is in the app, and each documented status is produced by a request.
"""

from __future__ import annotations

from typing import Any

from blobsync import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_REASONS = {
    200: "done",
    206: "partial content: the one range asked for",
    400: "malformed request or body (bad name, bad parameter, not a sealed blob)",
    401: "no valid credentials",
    403: "credentials of another user",
    404: "no such blob (or, for a stream download, some blobs missing)",
    406: "a flag outside PENDING, PROCESSING, PROCESSED, FAILED",
    409: "the blob already exists",
    410: 'a cursor this feed cannot serve (too old, another database\'s, or not one): '
         '"resync": true; list in full and go on from the listing\'s Changes-Cursor',
    412: "the expect flag did not hold",
    413: "over the maximum blob, stream or JSON body size",
    416: "unsatisfiable range; Content-Range: bytes */size",
    507: "the user's quota would be exceeded",
}


def _param(name: str, where: str, description: str, schema: dict[str, Any] | None = None,
           required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema or {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,254}$"},
    }


_UUID = _param("uuid", "path", "the user")
_BLOB_ID = _param("blob_id", "path", "the blob")
_NAMESPACE = _param("namespace", "query", "namespace; `default` when absent")
_FLAG_SCHEMA = {"type": "string", "enum": ["PENDING", "PROCESSING", "PROCESSED", "FAILED"]}
_BOOL = {"type": "string", "enum": ["true", "false"]}
_IDS = {"type": "array", "items": {"type": "string"}}
_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_CHANGE = {
    "type": "object",
    "required": ["namespace", "blob_id", "op"],
    "properties": {
        "namespace": {"type": "string"},
        "blob_id": {"type": "string"},
        "op": {"type": "string", "enum": ["put", "delete", "flags"]},
        "size": {"type": "integer", "description": "sealed size; put only"},
        "tag": {"type": "string", "description": "base64url of the 16-byte tag; put only"},
        "flags": {"type": "array", "items": _FLAG_SCHEMA,
                  "description": "put and flags only"},
        "meta": {"type": "string", "description": "the blob's sealed meta (SPEC 11); put "
                 "only, when the blob has one"},
    },
}
_META = {"type": "string", "maxLength": 4096,
         "description": "the blob's sealed meta (SPEC 11): base64url, 28 bytes at least"}
_META_HEADER = {"Blob-Meta": {"description": "the blob's sealed meta (SPEC 11), when it has "
                              "one", "required": False, "schema": {"type": "string"}}}
# A listing: ids, or with with_meta=true objects (one array schema: [] is both).
_LISTED = {"type": "array", "items": {"oneOf": [{"type": "string"}, {
    "type": "object", "required": ["blob_id", "size", "meta"],
    "properties": {"blob_id": {"type": "string"},
                   "size": {"type": "integer", "description": "the sealed size"},
                   "meta": {**_META, "nullable": True}}}]}}
_CHANGES_PAGE = {
    "type": "object",
    "required": ["changes", "cursor", "done"],
    "properties": {
        "changes": {"type": "array", "items": _CHANGE},
        "cursor": {"type": "string", "description": "opaque: the `since` of the next call"},
        "done": {"type": "boolean", "description": "false: more are waiting; ask at once"},
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _responses(ok: dict[str, Any], *errors: int, extra: dict[int, Any] | None = None
               ) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    for status, resp in (extra or {}).items():
        out[str(status)] = resp
    for status in errors:
        out[str(status)] = {"description": _REASONS[status], "content": _json(_ERROR)}
    return out


def build_openapi() -> dict[str, Any]:
    auth = [{"token": []}]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "blobsync public API",
            "version": __version__,
            "description": "LEAP Soledad's blobs protocol (SPEC sections 3 to 5), the "
            'change feed (SPEC 8) and encrypted metas (SPEC 11). Errors are JSON '
            '`{"error": "..."}`; unknown routes answer 404 and wrong methods 405.',
        },
        "components": {
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Token base64(uuid:token)`",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "missing": {**_IDS, "description": "stream download: absent ids"},
                        "blob_id": {"type": "string", "nullable": True,
                                    "description": "stream upload: the first blob that was "
                                    "wrong; null when the error names none"},
                        "stored": _IDS,
                        "existing": _IDS,
                        "resync": {"type": "boolean",
                                   "description": "410 of the change feed: list in full"},
                    },
                }
            },
        },
        "paths": {
            "/": {
                "get": {
                    "operationId": "serverInfo",
                    "summary": "server information: version, enabled services, limits",
                    "responses": _responses({"description": "information",
                                             "content": _json({"type": "object"})}),
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "this document",
                    "responses": _responses({"description": "OpenAPI 3 document",
                                             "content": _json({"type": "object"})}),
                }
            },
            "/blobs/{uuid}": {
                "parameters": [_UUID],
                "get": {
                    "operationId": "listBlobs",
                    "summary": "ids of the user's blobs in one namespace, or their count",
                    "security": auth,
                    "parameters": [
                        _NAMESPACE,
                        _param("filter_flag", "query", "only blobs with this flag", _FLAG_SCHEMA),
                        _param("order_by", "query", "date or +date: oldest first; -date: "
                               "newest first", {"type": "string",
                                                "enum": ["date", "+date", "-date"]}),
                        _param("deleted", "query", "ids of deleted blobs (tombstones)", _BOOL),
                        _param("only_count", "query", 'answer {"count": n}', _BOOL),
                        _param("with_meta", "query", "blobs as {blob_id, size, meta} (SPEC "
                               "11); ignored with deleted or only_count", _BOOL),
                        _param("limit", "query", "at most this many (extension)",
                               {"type": "integer", "minimum": 1}),
                    ],
                    "responses": _responses(
                        {"description": "ids, blobs with their metas, or a count",
                         "headers": {"Changes-Cursor": {
                             "description": "a listing of ids: the change feed's cursor "
                             "consistent with it (SPEC 8); follow the feed from there",
                             "required": False, "schema": {"type": "string"}}},
                         "content": _json({"oneOf": [_LISTED, {
                             "type": "object", "properties": {"count": {"type": "integer"}}}]})},
                        400, 401, 403, 406,
                    ),
                },
            },
            "/blobs/{uuid}/{blob_id}": {
                "parameters": [_UUID, _BLOB_ID, _NAMESPACE],
                "get": {
                    "operationId": "getBlob",
                    "summary": "the sealed bytes (header Tag: base64url(tag)), or its flags",
                    "security": auth,
                    "parameters": [
                        _param("only_flags", "query", "answer the JSON list of flags", _BOOL),
                        _param("Range", "header", "one range: bytes=a-b, bytes=a-, bytes=-n",
                               {"type": "string"}),
                    ],
                    "responses": _responses(
                        {"description": "the sealed blob, or its flags",
                         "headers": {"Tag": {"schema": {"type": "string"}}, **_META_HEADER},
                         "content": {**_BINARY, **_json(_IDS)}},
                        400, 401, 403, 404, 416,
                        extra={206: {"description": _REASONS[206], "headers": _META_HEADER,
                                     "content": _BINARY}},
                    ),
                },
                "put": {
                    "operationId": "putBlob",
                    "summary": "create the blob from the sealed bytes in the body",
                    "security": auth,
                    "parameters": [_param("Blob-Meta", "header", "its sealed meta (SPEC 11), "
                                          "checked before the body: 400 malformed, 413 longer "
                                          "than 4096", _META)],
                    "requestBody": {"required": True, "content": _BINARY},
                    "responses": _responses({"description": "stored",
                                             "content": _json({"type": "object"})},
                                            400, 401, 403, 409, 413, 507),
                },
                "post": {
                    "operationId": "setFlags",
                    "summary": "replace the flags with the JSON list in the body",
                    "security": auth,
                    "parameters": [_param("expect", "query", "change only if the blob carries "
                                          "this flag now, atomically", _FLAG_SCHEMA)],
                    "requestBody": {"required": True,
                                    "content": _json({"type": "array", "items": _FLAG_SCHEMA})},
                    "responses": _responses({"description": "flags set",
                                             "content": _json({"type": "object"})},
                                            400, 401, 403, 404, 406, 412, 413),
                },
                "delete": {
                    "operationId": "deleteBlob",
                    "summary": "delete the blob, leaving a tombstone",
                    "security": auth,
                    "responses": _responses({"description": "deleted",
                                             "content": _json({"type": "object"})},
                                            400, 401, 403, 404),
                },
            },
            "/changes/{uuid}": {
                "parameters": [_UUID],
                "get": {
                    "operationId": "changes",
                    "summary": "the change feed after a cursor (SPEC 8): a page, a long poll, "
                    "or with Accept: text/event-stream, Server-Sent Events",
                    "security": auth,
                    "parameters": [
                        _param("since", "query", "a cursor this feed gave; absent: from the "
                               "oldest change kept", {"type": "string"}),
                        _param("limit", "query", "at most this many changes (default 1000)",
                               {"type": "integer", "minimum": 1, "maximum": 10000}),
                        _param("timeout", "query", "long poll: wait up to this many seconds "
                               "for a change (default 0)",
                               {"type": "number", "minimum": 0, "maximum": 300}),
                        {**_NAMESPACE, "description": "only this namespace's changes (the "
                         "cursor still moves over all of them); absent: every namespace"},
                        _param("Last-Event-ID", "header", "event stream: the last event's id, "
                               "in place of since", {"type": "string"}),
                    ],
                    "responses": _responses(
                        {"description": "changes committed after the cursor, oldest first; "
                         "an event stream: `event: change`, `id: <cursor>`, `data: <change>` "
                         "per change, and a comment line when idle",
                         "content": {**_json(_CHANGES_PAGE),
                                     "text/event-stream": {"schema": {"type": "string"}}}},
                        400, 401, 403, 410,
                    ),
                },
            },
            "/stream/{uuid}": {
                "parameters": [_UUID],
                "post": {
                    "operationId": "stream",
                    "summary": "many blobs in one request (SPEC 3)",
                    "security": auth,
                    "parameters": [
                        _NAMESPACE,
                        _param("direction", "query", "download or upload",
                               {"type": "string", "enum": ["download", "upload"]}, True),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _IDS},
                            "application/octet-stream": {"schema": {
                                "type": "string", "format": "binary",
                                "description": "upload: a JSON line of [id, size] pairs, or "
                                "[id, size, meta] with a blob's sealed meta (SPEC 11), newline, "
                                "the sealed blobs back to back"}},
                        },
                    },
                    "responses": _responses(
                        {"description": "download: frames; upload: stored and existing ids",
                         "content": {**_BINARY, **_json({"type": "object", "properties": {
                             "stored": _IDS, "existing": _IDS}})}},
                        400, 401, 403, 404, 413, 507,
                    ),
                },
            },
        },
    }

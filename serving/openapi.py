"""What the API says about itself, truthfully, and readable in an air-gapped plant.

- The API key is an OpenAPI security scheme (``ApiKey``, in the configured header) on
  every operation that checks it, so Swagger UI's Authorize button works.
- Every refusal a route can give is documented with the one error shape
  (``{"error": {...}}``, serving.errors) and an example per code; FastAPI's own 422 schema,
  which the API never sends, is replaced.
- ``/docs`` is Swagger UI 5 (OpenAPI 3.1: FastAPI's) from the fastapi-offline package's
  files, served by the API itself: nothing comes from a CDN.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from serving.schemas import ErrorBody
from serving.security import KEY_SCHEME

SCHEME = KEY_SCHEME.scheme_name
# Swagger UI's files as the fastapi-offline package ships them (its own app factory
# replaces FastAPI; only the files are used)
SWAGGER_FILES = Path(fastapi_offline.__file__).parent / "static"
DOCS_FILES = "/docs/files"


class Refusal(NamedTuple):
    status: int
    code: str
    example: str
    field: str | None = None


# the refusals several routes share; each route lists its own beside them
UNAUTHORIZED = Refusal(
    401,
    "unauthorized",
    "no API key in header X-API-Key: send the key your plant administrator configured "
    "for this client",
    "X-API-Key",
)
INVALID = Refusal(
    422, "invalid_request", "query.limit: Input should be less than or equal to 1000", "query.limit"
)
TOO_SLOW = Refusal(
    408, "request_timeout", "the body did not arrive within 30 s (serve_body_timeout_s)"
)
NO_MODELS = Refusal(
    503, "no_models", "no models loaded: no champion segmentation model in the registry"
)
OVERLOADED = Refusal(
    503,
    "overloaded",
    "the queue holds 256 frames (serve_queue_frames): retry after the Retry-After seconds",
)
NO_WAREHOUSE = Refusal(
    503,
    "warehouse_missing",
    "no warehouse at /srv/steelsight/warehouse: run `steelsight ingest` and "
    "`steelsight inspect` first",
)
_PHRASES = {
    400: "Bad request: the body cannot be read as the route expects.",
    401: "No key, or not a configured key, in the API key header.",
    404: "Not found.",
    408: "The request did not arrive in time.",
    413: "Too large.",
    415: "Not a media type this route takes.",
    422: "A parameter or the image is invalid.",
    503: "Not available now; a Retry-After header says when to try again where known.",
}


def responses(*refusals: Refusal) -> dict[int | str, dict]:
    """FastAPI ``responses=`` for these refusals: the error shape, one example per code."""
    out: dict[int | str, dict] = {}
    for r in refusals:
        entry = out.setdefault(
            r.status,
            {
                "model": ErrorBody,
                "description": _PHRASES.get(r.status, "Refused."),
                "content": {"application/json": {"examples": {}}},
            },
        )
        body = {"status": r.status, "code": r.code, "message": r.example}
        if r.field is not None:
            body["field"] = r.field
        entry["content"]["application/json"]["examples"][r.code] = {
            "summary": r.code,
            "value": {"error": body},
        }
    return out


def install(app: FastAPI, key_header: str, open_access: bool) -> None:
    """The schema with its security scheme, and /docs served from local files."""

    def schema() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        demo = " This server runs without keys (a demo): any value passes."
        spec["components"]["securitySchemes"][SCHEME] = {
            "type": "apiKey",
            "in": "header",
            "name": key_header,
            "description": "The key the plant administrator configured for this client "
            "(STEELSIGHT_API_KEYS)." + (demo if open_access else ""),
        }
        for operations in spec["paths"].values():
            for operation in operations.values():
                unauthorized = operation.get("responses", {}).get("401")
                if unauthorized:  # the example names the header the server really reads
                    examples = unauthorized["content"]["application/json"]["examples"]
                    value = examples["unauthorized"]["value"]["error"]
                    value["message"] = value["message"].replace("X-API-Key", key_header)
                    value["field"] = key_header
        app.openapi_schema = spec
        return spec

    app.openapi = schema  # type: ignore[method-assign]
    app.mount(DOCS_FILES, StaticFiles(directory=SWAGGER_FILES), "docs-files")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} — API",
            swagger_js_url=f"{DOCS_FILES}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_FILES}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_FILES}/favicon.png",
            # no online validator badge: nothing leaves the plant; the key is not kept in
            # the browser's storage (Swagger's persistAuthorization stays off)
            swagger_ui_parameters={"validatorUrl": None},
        )

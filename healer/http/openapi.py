"""How both listeners describe themselves in their OpenAPI documents.

Every operation documents every status it answers, each with a typed body, so that a client can be
generated from the document and a conformance check can fail: the one error body every refusal
carries (`Problem`), the `Retry-After` header of 429 and 503, plain-text bodies (probes, metrics),
and JSON Schemas inlined for bodies a route reads itself (the Stripe webhook's, verified as bytes).
"""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel

Responses = dict[int | str, dict[str, Any]]


class Problem(BaseModel):
    """Every refusal's body: one sentence for whoever sent the request, never exception text."""

    detail: str


def _retry_after(required: bool) -> dict[str, Any]:
    return {"Retry-After": {"description": "seconds to wait before trying again", "required": required,
                            "schema": {"type": "integer", "minimum": 1}}}


def problem(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """A refusal with the `Problem` body; `retry_after`: the answer always says when to try again."""
    response: dict[str, Any] = {"model": Problem, "description": description}
    if retry_after:
        response["headers"] = _retry_after(required=True)
    return response


def unavailable(description: str = "the database (or storage) is unavailable: try again shortly",
                *, always_retry_after: bool = True) -> dict[str, Any]:
    response = problem(description)
    response["headers"] = _retry_after(required=always_retry_after)
    return response


TOO_MANY = problem("too many requests from this client address", retry_after=True)


def plain_text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def operation_id(route: APIRoute) -> str:
    """The route function's name (`complete`, `retry`): what a generated client calls the operation."""
    return route.name


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema with its `$defs` resolved in place.

    A schema put into an operation by hand (`openapi_extra`) cannot point into `$defs`: in an
    OpenAPI document `#` is the document, not the schema.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolved(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolved(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolved(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolved(item) for item in node]
        return node

    inlined: dict[str, Any] = resolved(schema)
    return inlined

"""Gateway API types canarist passes through to the HTTPRoute it owns.

The constraints are Gateway API's own (v1.4.1, standard channel; gatewayapi_schema.py holds the
copied schemas; unit tests hold ParentReference and Hostname to them), so a CanaryRelease that
`kubectl apply` accepts never yields an HTTPRoute the API server rejects mid-rollout.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema, field_validator, model_validator

from .base import ApiModel
from .gatewayapi_schema import SCHEMAS

_PARENT = SCHEMAS["ParentReference"]["properties"]
_HEADER = SCHEMAS["HTTPRouteMatch"]["properties"]["headers"]["items"]["properties"]
HOSTNAME = SCHEMAS["Hostname"]["pattern"]
_GROUP = _PARENT["group"]["pattern"]  # "" is allowed: the core group, for a Service parent
_KIND = _PARENT["kind"]["pattern"]
_DNS_LABEL = _PARENT["namespace"]["pattern"]
_DNS_SUBDOMAIN = _PARENT["sectionName"]["pattern"]
_HEADER_NAME = _HEADER["name"]["pattern"]  # an HTTP token; query param names use the same
_PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$")

Hostname = Annotated[str, Field(min_length=1, max_length=253, pattern=HOSTNAME)]


class ParentReference(ApiModel):
    """A Gateway API parentRef (usually a Gateway) the generated HTTPRoute attaches to."""

    group: str | None = Field(default=None, max_length=253, pattern=_GROUP, description=(
        'Group of the referent; unset means gateway.networking.k8s.io, "" the core group (a Service).'))
    kind: str | None = Field(default=None, min_length=1, max_length=63, pattern=_KIND,
                             description="Kind of the referent; unset means Gateway.")
    namespace: str | None = Field(default=None, min_length=1, max_length=63, pattern=_DNS_LABEL)
    name: str = Field(min_length=1, max_length=253)
    section_name: str | None = Field(default=None, min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN,
                                     description="A listener of a Gateway, or a port name of a Service.")
    port: int | None = Field(default=None, ge=1, le=65535)


# Messages as in Gateway API's CEL rules for HTTPPathMatch, so both sides say the same thing.
_NOT_IN_PATH = ["//", "/./", "/../", "%2f", "%2F", "#"]
_NOT_PATH_END = ["/..", "/."]
_PATH_TYPES = "['Exact', 'PathPrefix']"


class HTTPPathMatch(ApiModel):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = Field(default="/", max_length=1024)

    @model_validator(mode="after")
    def _path(self) -> "HTTPPathMatch":
        if self.type == "RegularExpression":
            return self
        value = self.value
        problems = [] if value.startswith("/") else [
            f"value must be an absolute path and start with '/' when type one of {_PATH_TYPES}"]
        problems += [f"must not contain '{s}' when type one of {_PATH_TYPES}" for s in _NOT_IN_PATH if s in value]
        problems += [f"must not end with '{s}' when type one of {_PATH_TYPES}" for s in _NOT_PATH_END
                     if value.endswith(s)]
        if not _PATH_CHARS.fullmatch(value):
            problems.append(f"must only contain valid characters (matching {_PATH_CHARS.pattern}) "
                            f"for types {_PATH_TYPES}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class HTTPHeaderMatch(ApiModel):
    name: str = Field(min_length=1, max_length=256, pattern=_HEADER_NAME)
    type: Literal["Exact", "RegularExpression"] = "Exact"
    value: str = Field(min_length=1, max_length=4096)


class HTTPQueryParamMatch(ApiModel):
    name: str = Field(min_length=1, max_length=256, pattern=_HEADER_NAME)
    type: Literal["Exact", "RegularExpression"] = "Exact"
    value: str = Field(min_length=1, max_length=1024)


def unique_names(items: list[HTTPHeaderMatch] | list[HTTPQueryParamMatch], fold_case: bool = False) -> list:
    """Repeated names are refused: the CRD makes these lists maps keyed by name, and Gateway API
    considers only the first of header names that differ in case alone (`fold_case`)."""
    names = [item.name.lower() if fold_case else item.name for item in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"names must be unique; repeated: {', '.join(repeated)}")
    return items


class HTTPRouteMatch(ApiModel):
    """Gateway API HTTPRouteMatch: every condition set must hold for a request to match."""

    path: HTTPPathMatch | None = Field(default=None, description="Unset matches every path (prefix /).")
    headers: list[HTTPHeaderMatch] | None = Field(default=None, max_length=16)
    query_params: list[HTTPQueryParamMatch] | None = Field(default=None, max_length=16)
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"] | None = None

    @field_validator("headers", "query_params")
    @classmethod
    def _unique(cls, items: list | None) -> list | None:
        return items if items is None else unique_names(items)


def _valid_match(match: dict[str, Any]) -> dict[str, Any]:
    HTTPRouteMatch.model_validate(match)  # its errors keep their location inside the match
    return match


# A match as the API server stores it: a plain dict, validated as HTTPRouteMatch, and described
# in the CRD by Gateway API's own schema (with its CEL rules). It stays a dict because the router
# copies it verbatim into the HTTPRoute.
RouteMatch = Annotated[dict[str, Any], AfterValidator(_valid_match), WithJsonSchema(SCHEMAS["HTTPRouteMatch"])]

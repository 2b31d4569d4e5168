"""The judge's authorization rules and token cache, with tokens a table vouches for.

The API server's TokenReview itself is exercised in tests/integration/test_judge_auth.py; here the
rules of who may do what, and how long an answer is remembered, are checked exhaustively.
"""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from canarist.judge.auth import Authenticator, AuthUnavailable, Identity, Policy, token_expiry
from canarist.judge.config import ConfigError, JudgeConfig
from canarist.judge.service import SERVICE_KEY, create_app
from canarist.judge.types import Comparison, Score

WINDOW = {"since": "2026-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"}


def jwt(subject: str, exp: float | None = None) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    claims = {"sub": subject, **({"exp": exp} if exp is not None else {})}
    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


class TableReviewer:
    """Vouches for the tokens in its table (token -> identity); counts the reviews it answers."""

    def __init__(self, table: dict[str, Identity], down: bool = False) -> None:
        self.table, self.down, self.calls = table, down, 0

    def review(self, token: str, audience: str) -> Identity | None:
        self.calls += 1
        if self.down:
            raise AuthUnavailable("connection refused")
        return self.table.get(token) if audience == "canarist-judge" else None


SHOP = Identity("system:serviceaccount:shop:web")
BANK = Identity("system:serviceaccount:bank:api")
OPERATOR = Identity("system:serviceaccount:canarist:canarist", ("system:serviceaccounts",))
AUDITOR = Identity("alice", ("auditors",))
TOKENS = {jwt("shop"): SHOP, jwt("bank"): BANK, jwt("operator"): OPERATOR, jwt("alice"): AUDITOR}
TOKEN = {identity.username: token for token, identity in TOKENS.items()}


class OneScorer:
    async def score(self, request: str, response: str) -> Score:
        return Score(0.9, "fine", 1)

    async def compare(self, request: str, answer_a: str, answer_b: str) -> Comparison:
        return Comparison("tie", "same", 1)

    async def close(self) -> None:
        pass


def test_policy_rules():
    policy = Policy(readers=["canarist/canarist"], admins=["group:auditors"])
    assert policy.may_report(SHOP, "shop/web") and not policy.may_report(SHOP, "bank/api")
    assert not policy.may_report(AUDITOR, "shop/web"), "only ServiceAccounts report, for their namespace"
    assert policy.may_read(SHOP, "shop/web") and not policy.may_read(SHOP, "bank/api")
    assert policy.may_read(OPERATOR, "bank/api") and policy.may_read(AUDITOR, "bank/api")
    assert policy.is_admin(AUDITOR) and not policy.is_admin(OPERATOR) and not policy.is_admin(SHOP)
    assert Identity("system:serviceaccount:shop").namespace is None


def test_token_expiry_is_read_without_trusting_it():
    assert token_expiry(jwt("x", exp=1234.0)) == 1234.0
    assert token_expiry(jwt("x")) is None and token_expiry("not-a-jwt") is None and token_expiry("a.!!!.c") is None


def test_reviews_are_cached_never_past_the_tokens_expiry_and_failures_briefly():
    now = [1000.0]
    short = jwt("short", exp=1010.0)
    reviewer = TableReviewer({short: SHOP, jwt("long"): BANK})
    auth = Authenticator(reviewer, cache_ttl=60, negative_ttl=5, clock=lambda: now[0])

    async def go():
        for _ in range(3):
            assert await auth.identify(jwt("long")) == BANK
            assert await auth.identify(short) == SHOP
            assert await auth.identify(jwt("nobody")) is None
        assert reviewer.calls == 3, "one review per token while remembered"
        now[0] = 1011.0  # past the short token's exp, within the TTL
        await auth.identify(short), await auth.identify(jwt("long")), await auth.identify(jwt("nobody"))
        assert reviewer.calls == 5, "the expired token and the refused one asked again; the other remembered"
        assert await auth.identify("no-dots") is None and reviewer.calls == 5, "not a JWT: no review"
        same = await asyncio.gather(*(auth.identify(jwt("fresh")) for _ in range(20)))
        assert same == [None] * 20 and reviewer.calls == 6, "concurrent callers share one review"
    asyncio.run(go())


def test_config_options():
    config = JudgeConfig.from_sources({}, {"CANARIST_JUDGE_AUTH": "kubernetes",
                                           "CANARIST_JUDGE_READERS": "canarist/canarist, group:sre"})
    assert config.auth == "kubernetes" and config.readers == ("canarist/canarist", "group:sre")
    assert config.auth_audience == "canarist-judge" and config.admins == ()
    with pytest.raises(ConfigError, match="--auth: must be one of none, kubernetes"):
        JudgeConfig.from_sources({"auth": "basic"})


def scenario(reviewer: TableReviewer, body):
    config = JudgeConfig(db=":memory:", sample_rate=1.0, concurrency=1, shutdown_grace=0.1, auth="kubernetes",
                         readers=("canarist/canarist",), admins=("group:auditors",))

    async def go():
        app = create_app(config, OneScorer(), registry=CollectorRegistry(), reviewer=reviewer)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await body(client, app)
    return asyncio.run(go())


def sample(release: str = "shop/web") -> dict:
    return {"release": release, "variant": "canary", "request": "q", "response": "a"}


def bearer(username: str) -> dict:
    return {"Authorization": f"Bearer {TOKEN[username]}"}


def test_writes_need_a_token_of_the_releases_namespace_and_refusals_store_nothing():
    async def body(client, app):
        service = app[SERVICE_KEY]
        results = {}
        for name, headers, payload in [
            ("none", {}, sample()),
            ("basic", {"Authorization": "Basic dTpw"}, sample()),
            ("unknown", {"Authorization": f"Bearer {jwt('stranger')}"}, sample()),
            ("other-namespace", bearer(BANK.username), sample()),
            ("mixed-batch", bearer(SHOP.username), {"samples": [sample(), sample("bank/api")]}),
            ("not-a-serviceaccount", bearer(AUDITOR.username), sample()),
            ("own", bearer(SHOP.username), {"samples": [sample(), sample()]}),
        ]:
            resp = await client.post("/v1/samples", json=payload, headers=headers)
            results[name] = (resp.status, (await resp.json()).get("error", ""))
        await service.wait_idle()
        counts = service.storage.counts("shop/web", "canary", 0, 2**62), service.storage.counts("bank/api", "canary", 0, 2**62)
        return results, counts

    results, (shop, bank) = scenario(TableReviewer(TOKENS), body)
    assert {k: v[0] for k, v in results.items()} == {
        "none": 401, "basic": 401, "unknown": 401, "other-namespace": 403, "mixed-batch": 403,
        "not-a-serviceaccount": 403, "own": 202}
    assert results["none"][1].startswith("Authorization:") and "canarist-judge" in results["none"][1]
    assert "bank/api" in results["mixed-batch"][1] and "nothing of this batch was stored" in results["mixed-batch"][1]
    assert (shop.ingested, bank.ingested) == (2, 0), "only the authorized batch was stored"


def test_reads_exports_and_open_endpoints():
    async def body(client, app):
        async def status(method, path, who=None, **params):
            resp = await client.request(method, path, params=params, headers=bearer(who) if who else {})
            return resp.status
        verdict = {"release": "shop/web", "variant": "canary", **WINDOW}
        return {
            "verdict-own": await status("GET", "/v1/verdict", SHOP.username, **verdict),
            "verdict-other": await status("GET", "/v1/verdict", BANK.username, **verdict),
            "verdict-operator": await status("GET", "/v1/verdict", OPERATOR.username, **verdict),
            "verdict-anonymous": await status("GET", "/v1/verdict", **verdict),
            "pairs-other": await status("GET", "/v1/pairs", BANK.username, release="shop/web"),
            "pairs-operator": await status("GET", "/v1/pairs", OPERATOR.username, release="shop/web"),
            "export-own-namespace": await status("GET", "/v1/export", SHOP.username, release="shop/web"),
            "export-operator": await status("GET", "/v1/export", OPERATOR.username, release="shop/web"),
            "export-admin": await status("GET", "/v1/export", AUDITOR.username, release="shop/web"),
            "delete-own-namespace": await status("DELETE", "/v1/releases/shop/web", SHOP.username),
            "delete-operator": await status("DELETE", "/v1/releases/shop/web", OPERATOR.username),
            "delete-admin": await status("DELETE", "/v1/releases/shop/web", AUDITOR.username),
            "healthz": await status("GET", "/healthz"),
            "metrics": await status("GET", "/metrics"),
        }

    assert scenario(TableReviewer(TOKENS), body) == {
        "verdict-own": 200, "verdict-other": 403, "verdict-operator": 200, "verdict-anonymous": 401,
        "pairs-other": 403, "pairs-operator": 200,
        "export-own-namespace": 403, "export-operator": 403, "export-admin": 200,
        "delete-own-namespace": 403, "delete-operator": 403, "delete-admin": 200,
        "healthz": 200, "metrics": 200}


def test_an_unreachable_api_server_answers_503_not_401():
    async def body(client, app):
        resp = await client.post("/v1/samples", json=sample(), headers=bearer(SHOP.username))
        return resp.status, resp.headers.get("Retry-After"), (await resp.json())["error"]

    status, retry_after, error = scenario(TableReviewer(TOKENS, down=True), body)
    assert (status, retry_after) == (503, "5") and "retry later" in error


def test_the_operator_sends_its_token_only_to_trusted_judges(tmp_path, monkeypatch):
    from canarist.analysis.judge_http import auth_headers

    token = tmp_path / "token"
    token.write_text("operator-token\n")
    monkeypatch.setenv("CANARIST_JUDGE_TOKEN_FILE", str(token))
    monkeypatch.setenv("CANARIST_JUDGE_TRUSTED_URLS", "http://canarist-judge.canarist:8080, https://judge.example")
    assert auth_headers("http://canarist-judge.canarist:8080") == {"Authorization": "Bearer operator-token"}
    assert auth_headers("http://CANARIST-judge.canarist:8080/") == {"Authorization": "Bearer operator-token"}
    assert auth_headers("https://judge.example:443") == {"Authorization": "Bearer operator-token"}
    for untrusted in ("http://evil.example:8080", "http://canarist-judge.canarist:9090",
                      "https://canarist-judge.canarist:8080", "http://judge.example"):
        assert auth_headers(untrusted) == {}, untrusted
    token.write_text("rotated")
    assert auth_headers("https://judge.example") == {"Authorization": "Bearer rotated"}
    monkeypatch.delenv("CANARIST_JUDGE_TRUSTED_URLS")
    assert auth_headers("http://canarist-judge.canarist:8080") == {}

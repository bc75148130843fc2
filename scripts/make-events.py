#!/usr/bin/env python3
"""Regenerate events/*.json: API Gateway HTTP API v2 events wrapping Meta's webhook
bodies, signed with the documented test app secret so that they pass the
X-Hub-Signature-256 check of a local run (`make run`, `make watch`); and hostile
requests (characters a URI cannot carry in the query, path or Host header) as v2, REST
(v1) and ALB events, which must be answered, never fail the invocation.

The bodies come from tests/fixtures/ (each Meta fixture is kept there only); the
command and long-message bodies are text.json with another id and text.

Run after changing a fixture:  python3 scripts/make-events.py
"""
import hashlib
import hmac
import json
import pathlib

TEST_APP_SECRET = "whatsapp-webhook-test-secret"
VERIFY_TOKEN = "local-verify-token"
ROOT = pathlib.Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"


def event(method, query=None, body=None, signature=None, host=None, path="/webhook"):
    headers = {
        "host": host or "abcdef1234.execute-api.us-east-1.amazonaws.com",
        "user-agent": "facebookexternalua",
    }
    if body is not None:
        headers["content-type"] = "application/json"
    if signature is not None:
        headers["x-hub-signature-256"] = signature
    e = {
        "version": "2.0",
        "routeKey": f"{method} /webhook",
        "rawPath": path,
        "rawQueryString": "&".join(f"{k}={v}" for k, v in (query or {}).items()),
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abcdef1234",
            "domainName": "abcdef1234.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abcdef1234",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "173.252.95.10",
                "userAgent": "facebookexternalua",
            },
            "requestId": "sample-request-id",
            "routeKey": f"{method} /webhook",
            "stage": "$default",
            "time": "27/Nov/2026:16:00:00 +0000",
            "timeEpoch": 1795795200000,
        },
        "isBase64Encoded": False,
    }
    if query:
        e["queryStringParameters"] = dict(query)
    if body is not None:
        e["body"] = body
    return e


def rest_event(query):
    """An API Gateway REST API (payload 1.0) GET: it hands on the query decoded, as
    single- and multi-value parameters, and every header twice as well."""
    headers = {
        "Host": "abcdef1234.execute-api.us-east-1.amazonaws.com",
        "User-Agent": "facebookexternalua",
        "X-Forwarded-Proto": "https",
    }
    return {
        "resource": "/webhook",
        "path": "/webhook",
        "httpMethod": "GET",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": dict(query),
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()},
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abcdef1234",
            "resourceId": "abc123",
            "resourcePath": "/webhook",
            "httpMethod": "GET",
            "path": "/prod/webhook",
            "stage": "prod",
            "protocol": "HTTP/1.1",
            "requestId": "sample-request-id",
            "requestTimeEpoch": 1795795200000,
            "identity": {"sourceIp": "173.252.95.10", "userAgent": "facebookexternalua"},
            "domainName": "abcdef1234.execute-api.us-east-1.amazonaws.com",
        },
        "body": None,
        "isBase64Encoded": False,
    }


def alb_event(query):
    """An ALB target group GET: the query parameters as the client wrote them."""
    return {
        "requestContext": {"elb": {"targetGroupArn":
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/webhook/0123456789abcdef"}},
        "httpMethod": "GET",
        "path": "/webhook",
        "queryStringParameters": dict(query),
        "headers": {
            "host": "webhook-123.us-east-1.elb.amazonaws.com",
            "user-agent": "facebookexternalua",
            "x-forwarded-proto": "https",
        },
        "body": "",
        "isBase64Encoded": False,
    }


def sign(body: str) -> str:
    return "sha256=" + hmac.new(TEST_APP_SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()


FIXTURES = ROOT / "tests" / "fixtures"
LONG_PARAGRAPH = " ".join(["This paragraph is long enough to matter."] * 40)
# Bodies that are text.json with another message id and text.
TEXT_VARIANTS = {
    "command-new": ("wamid.SAMPLE.command.new", "/new"),
    "command-otr": ("wamid.SAMPLE.command.otr", "/otr"),
    "long-message": ("wamid.SAMPLE.long.0001", "\n\n".join([LONG_PARAGRAPH] * 8)),
}


def body_of(name: str) -> str:
    if name in TEXT_VARIANTS:
        payload = json.loads((FIXTURES / "text.json").read_text())
        message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
        message["id"], message["text"]["body"] = TEXT_VARIANTS[name]
    else:
        payload = json.loads((FIXTURES / f"{name}.json").read_text())
    # Compact, as Meta sends it; the signature covers these exact bytes.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def main():
    out = {}
    verify = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    out["verify-ok"] = (event("GET", verify), 200)
    out["verify-wrong-token"] = (event("GET", {**verify, "hub.verify_token": "wrong"}), 403)
    out["verify-missing-params"] = (event("GET", {"hub.mode": "subscribe"}), 400)
    for name in ["text", "command-new", "command-otr", "long-message", "status-delivered",
                 "status-failed", "image", "batch-two-entries"]:
        body = body_of(name)
        out[name] = (event("POST", body=body, signature=sign(body)), 200)
    body = body_of("text")
    out["bad-signature"] = (event("POST", body=body, signature=sign(body + " ")), 403)
    malformed = '{"object":"whatsapp_business_account","entry":[{'
    out["malformed-body"] = (event("POST", body=malformed, signature=sign(malformed)), 400)
    # Hostile requests: answered (4xx, or 200 when the verification itself is fine).
    out["query-bad-chars"] = (event("GET", {"a": '"{}|^ b'}), 400)
    out["verify-bad-chars"] = (event("GET", {**verify, "utm": '"{}|^ <x>`\\[é]'}), 200)
    out["verify-bad-host"] = (event("GET", verify, host="bad host{}"), 200)
    out["path-bad-chars"] = (event("GET", path='/webhook/{x}|"^ y'), 404)
    out["rest-verify-ok"] = (rest_event(verify), 200)
    out["rest-query-bad-chars"] = (rest_event({**verify, "q": 'a="{}|^ b&c=%zz#frag'}), 200)
    out["alb-query-bad-chars"] = (alb_event({**verify, "q": 'a="{}|^ b'}), 200)

    expected = []
    for name, (e, status) in out.items():
        (EVENTS / f"{name}.json").write_text(json.dumps(e, indent=2, ensure_ascii=False) + "\n")
        expected.append(f"{name} {status}")
    (EVENTS / "expected-status.txt").write_text(
        "# event file, HTTP status a local run (test secret, echo engine) answers\n" + "\n".join(expected) + "\n")


if __name__ == "__main__":
    main()

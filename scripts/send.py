#!/usr/bin/env python3
"""Send one signed WhatsApp text webhook to a running server (`make send TEXT=...`).

The body is what Meta POSTs for a text message; it is signed like Meta signs it
(X-Hub-Signature-256: HMAC-SHA256 of the body with the app secret). Works against
`make run` on this machine or, with --url, through ngrok to any deployment whose app
secret you pass (WHATSAPP_APP_SECRET; default: the test secret that `make run` uses).
The reply goes wherever that server sends replies: `make run` only logs its length
(`make chat` shows replies).

    python3 scripts/send.py "hello"                       # http://127.0.0.1:9443/webhook
    python3 scripts/send.py --url https://x.ngrok.app/webhook --from 15557654321 "hi"
    python3 scripts/send.py --curl "hello"                # print the curl, send nothing
"""
import argparse
import hashlib
import hmac
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request

TEST_APP_SECRET = "whatsapp-webhook-test-secret"


def text_webhook(text, sender, phone_number_id):
    now = int(time.time())
    return {
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "0",
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550000000",
                                 "phone_number_id": phone_number_id},
                    "contacts": [{"profile": {"name": "send.py"}, "wa_id": sender}],
                    "messages": [{
                        "from": sender,
                        "id": f"wamid.send.{time.time_ns()}",
                        "timestamp": str(now),
                        "type": "text",
                        "text": {"body": text},
                    }],
                },
            }],
        }],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text", help="the message text")
    parser.add_argument("--url", default=os.environ.get("URL") or None,
                        help="webhook URL (default http://127.0.0.1:PORT/webhook)")
    parser.add_argument("--port", default=os.environ.get("PORT", "9443"))
    parser.add_argument("--from", dest="sender", default=os.environ.get("FROM", "15557654321"),
                        help="sender's number, digits only (default 15557654321)")
    parser.add_argument("--phone-number-id", default=os.environ.get("PHONE_NUMBER_ID", "123456123456123"),
                        help="the business number's id the server is configured with "
                             "(default: that of `make run`)")
    parser.add_argument("--curl", action="store_true", help="print the curl command instead of sending")
    args = parser.parse_args()

    secret = os.environ.get("WHATSAPP_APP_SECRET") or TEST_APP_SECRET
    url = args.url or f"http://127.0.0.1:{args.port}/webhook"
    body = json.dumps(text_webhook(args.text, args.sender, args.phone_number_id)).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

    if args.curl:
        print(f"curl -s -X POST {shlex.quote(url)} -H 'content-type: application/json'"
              f" -H 'x-hub-signature-256: {signature}' --data-binary {shlex.quote(body.decode())}")
        return 0
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "content-type": "application/json", "x-hub-signature-256": signature})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, answer = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        status, answer = e.code, e.read().decode(errors="replace")
    except urllib.error.URLError as e:
        print(f"send.py: cannot reach {url}: {e.reason} (is `make run` running?)", file=sys.stderr)
        return 1
    print(f"{url} answered {status} {answer.strip()}")
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())

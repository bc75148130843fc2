#!/usr/bin/env python3
"""Print ready-to-paste curl commands for the local server (used by `make run`)."""
import json
import pathlib
import shlex
import sys

port = sys.argv[1] if len(sys.argv) > 1 else "9443"
root = pathlib.Path(__file__).resolve().parent.parent
event = json.loads((root / "events" / "text.json").read_text())
url = f"http://127.0.0.1:{port}/webhook"
print("Verify GET (answers the challenge 12345):")
print(f"  curl -s '{url}?hub.mode=subscribe&hub.verify_token=local-verify-token&hub.challenge=12345'")
print("Signed text message from events/text.json (answers ok; the reply is not sent and only its length is logged):")
print(
    f"  curl -s -X POST {url} -H 'content-type: application/json'"
    f" -H 'x-hub-signature-256: {event['headers']['x-hub-signature-256']}'"
    f" --data-binary {shlex.quote(event['body'])}"
)
print("Your own text, signed with the test app secret (add URL=https://<you>.ngrok.app/webhook to go through ngrok):")
print(f"  make send TEXT='hello there'{'' if port == '9443' else f' PORT={port}'}")
print("To see what the bot answers, chat with it in a terminal instead: make chat")
print()

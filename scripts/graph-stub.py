#!/usr/bin/env python3
"""A stand-in for the Graph API for local Lambda runs: answers every POST with 200
{"messages":[{"id":"wamid.X"}]} (what /{phone_number_id}/messages answers; read receipts
and typing indicators accept any 200) and logs one line per request to stderr.

usage: graph-stub.py [PORT] [PORT_FILE]   PORT 0 (default) takes a free port; the port
actually bound is printed on stdout and, when PORT_FILE is given, written there.
"""
import http.server
import json
import os
import sys

BODY = json.dumps({"messages": [{"id": "wamid.X"}], "success": True}).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, fmt, *args):
        sys.stderr.write("graph-stub: %s\n" % (fmt % args))


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    bound = server.server_address[1]
    if len(sys.argv) > 2:
        with open(sys.argv[2] + ".tmp", "w") as f:
            f.write(f"{bound}\n")
        os.replace(sys.argv[2] + ".tmp", sys.argv[2])
    print(bound, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

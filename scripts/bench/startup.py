#!/usr/bin/env python3
"""Start-up time of the whatsapp-webhook binary, for scripts/bench.sh.

  startup.py serve  BINARY PORT RUNS
      Spawn `BINARY serve` (built-in defaults, WEBHOOK_PORT=PORT) RUNS times; per run,
      the time from spawn to the "ready" log line, and to the first answered
      verification GET (sent as soon as the ready line shows; connect retried until
      the port answers, in case the line is late). Also the idle RSS after ready.
  startup.py lambda BINARY EVENT RUNS
      Serve a tiny Lambda Runtime API on 127.0.0.1 (GET .../invocation/next hands out
      EVENT once per run, POST .../response is recorded); spawn BINARY with
      AWS_LAMBDA_RUNTIME_API pointing at it and the Lambda env config; per run, the time
      from spawn to the POST of the first response.
  startup.py spawn  RUNS
      The cost of spawning /bin/true from here, to subtract mentally.

Prints one `RESULT key=value ...` line (milliseconds; medians over RUNS).
Traffic stays on 127.0.0.1.
"""

import http.client
import http.server
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

VERIFY_PATH = (
    "/webhook?hub.mode=subscribe&hub.verify_token=local-verify-token&hub.challenge=1158201444"
)

LAMBDA_ENV = {
    "WHATSAPP_PHONE_NUMBER_ID": "123456123456123",
    "WHATSAPP_VERIFY_TOKEN": "local-verify-token",
    "WHATSAPP_ACCESS_TOKEN": "x",
    "WHATSAPP_APP_SECRET": "whatsapp-webhook-test-secret",
    "STATE_KIND": "dynamodb",
    "TABLE_NAME": "t",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "x",
    "AWS_SECRET_ACCESS_KEY": "x",
    # What the Lambda service sets and lambda_runtime requires.
    "AWS_LAMBDA_FUNCTION_NAME": "whatsapp-webhook",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    # Never ask the EC2 instance metadata service (not on loopback) for anything.
    "AWS_EC2_METADATA_DISABLED": "true",
}


def ms(ns):
    return ns / 1e6


def summary(name, values):
    values = sorted(values)
    p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
    return (
        f"{name}_median_ms={statistics.median(values):.2f} {name}_min_ms={values[0]:.2f} "
        f"{name}_p90_ms={p90:.2f} {name}_max_ms={values[-1]:.2f}"
    )


def base_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WHATSAPP_"))}
    for k in ("STATE_KIND", "TABLE_NAME", "ENGINE_KIND", "ENGINE_URL", "WEBHOOK_PORT"):
        env.pop(k, None)
    env["NO_COLOR"] = "1"
    return env


def vm_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def wait_port_free(port):
    for _ in range(200):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return
            except OSError:
                time.sleep(0.01)


def serve(binary, port, runs):
    env = base_env()
    env["WEBHOOK_PORT"] = str(port)
    ready, first, rss = [], [], []
    for _ in range(runs):
        wait_port_free(port)
        t0 = time.perf_counter_ns()
        proc = subprocess.Popen(
            [binary, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            t_ready = None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    raise SystemExit(f"serve exited before ready (code {proc.poll()})")
                if b"ready" in line:
                    t_ready = time.perf_counter_ns()
                    break
            if t_ready is None:
                raise SystemExit("no ready line within 10 s")
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", VERIFY_PATH)
                    resp = conn.getresponse()
                    body = resp.read()
                    conn.close()
                    break
                except ConnectionRefusedError:
                    if time.monotonic() > deadline:
                        raise SystemExit("port never answered")
                    time.sleep(0.0002)
            t_first = time.perf_counter_ns()
            if resp.status != 200 or body != b"1158201444":
                raise SystemExit(f"verify GET answered {resp.status} {body!r}")
            ready.append(ms(t_ready - t0))
            first.append(ms(t_first - t0))
            rss.append(vm_kb(proc.pid, "VmRSS"))
        finally:
            stop(proc)
    print(
        "RESULT "
        + summary("ready", ready)
        + " "
        + summary("first_get", first)
        + f" idle_rss_kb={int(statistics.median(rss))} runs={runs}"
    )


class Invocation:
    """One run's Runtime API state: a fresh server (and port) per run, so a request
    left over from the previous, killed process can never take this run's event."""

    def __init__(self, event):
        self.event = event
        self.lock = threading.Lock()
        self.armed = True  # the first `next` gets the event
        self.responded = threading.Event()
        self.release = threading.Event()  # ends a held `next`
        self.response_body = b""
        self.response_at = 0
        self.unexpected = []


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        run = self.server.run
        if self.path != "/2018-06-01/runtime/invocation/next":
            run.unexpected.append(("GET", self.path))
            return self.reply(404)
        with run.lock:
            give = run.armed
            run.armed = False
        if not give:
            # Hold the long poll, as the real Runtime API does, until this run ends.
            run.release.wait(60)
            self.close_connection = True
            return
        deadline = str(int(time.time() * 1000) + 30_000)
        self.reply(
            200,
            run.event,
            [
                ("Content-Type", "application/json"),
                ("Lambda-Runtime-Aws-Request-Id", "bench-request-1"),
                ("Lambda-Runtime-Deadline-Ms", deadline),
                (
                    "Lambda-Runtime-Invoked-Function-Arn",
                    "arn:aws:lambda:us-east-1:123456789012:function:whatsapp-webhook",
                ),
                ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000"),
            ],
        )

    def do_POST(self):
        run = self.server.run
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(length)
        ok = (202, b'{"status":"OK"}', [("Content-Type", "application/json")])
        if self.path == "/2018-06-01/runtime/invocation/bench-request-1/response":
            run.response_at = time.perf_counter_ns()
            run.response_body = body
            self.reply(*ok)
            run.responded.set()
            return
        run.unexpected.append(("POST", self.path, body[:300]))
        self.reply(*ok)
        if self.path.endswith("/error"):
            run.responded.set()


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A held long poll ends with its process killed: expected, not worth a trace.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def lambda_mode(binary, event_path, runs):
    with open(event_path, "rb") as f:
        event = f.read()
    env = base_env()
    env.update(LAMBDA_ENV)
    times = []
    for _ in range(runs):
        run = Invocation(event)
        server = QuietServer(("127.0.0.1", 0), RuntimeApi)
        server.run = run
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{server.server_address[1]}"
        t0 = time.perf_counter_ns()
        proc = subprocess.Popen(
            [binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            if not run.responded.wait(10):
                err = b""
                if proc.poll() is not None:
                    err = proc.stderr.read()
                raise SystemExit(f"no Lambda response within 10 s; stderr: {err[-2000:]!r}")
            t1 = run.response_at
            if run.unexpected:
                raise SystemExit(f"unexpected Runtime API calls: {run.unexpected}")
            answer = json.loads(run.response_body)
            if answer.get("statusCode") != 200 or answer.get("body") != "1158201444":
                raise SystemExit(f"unexpected Lambda response: {answer}")
            times.append(ms(t1 - t0))
        finally:
            stop(proc)
            run.release.set()
            server.shutdown()
            server.server_close()
    print("RESULT " + summary("lambda_first", times) + f" runs={runs}")


def spawn(runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        subprocess.run(["/bin/true"], check=True)
        times.append(ms(time.perf_counter_ns() - t0))
    print("RESULT " + summary("spawn", times) + f" runs={runs}")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "serve" and len(sys.argv) == 5:
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) >= 2 and sys.argv[1] == "lambda" and len(sys.argv) == 5:
        lambda_mode(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) == 3 and sys.argv[1] == "spawn":
        spawn(int(sys.argv[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()

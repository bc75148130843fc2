# Start-up of `serve` until its "ready" line: secrets from the environment vs one
# GetSecretValue against moto_server on loopback (BENCHMARKS.md, "Secrets read at run time").
# Usage: .venv/bin/python scripts/bench/secrets-startup.py BIN .venv RUNS  (boto3 comes with moto)
import json, os, socket, subprocess, sys, tempfile, time, statistics
import boto3
bin_, venv, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
mport = free_port()
moto = subprocess.Popen([f"{venv}/bin/moto_server", "-H", "127.0.0.1", "-p", str(mport)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
endpoint = f"http://127.0.0.1:{mport}"
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", mport), 0.2).close(); break
    except OSError: time.sleep(0.1)
os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1")
sm = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")
sm.create_secret(Name="bench", SecretString=json.dumps({"access_token": "t", "app_secret": "s", "verify_token": "v"}))
def run(with_secret):
    port = free_port()
    cfg = f"channels:\n  whatsapp:\n    phone_number_id: '1'\n    webhook_port: {port}\n"
    env = dict(os.environ, NO_COLOR="1")
    if with_secret:
        cfg += f"secrets:\n  secret_id: bench\n  endpoint_url: '{endpoint}'\n"
    else:
        cfg += "    verify_token: v\n"
        env.update(WHATSAPP_ACCESS_TOKEN="t", WHATSAPP_APP_SECRET="s")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(cfg)
    t0 = time.perf_counter()
    p = subprocess.Popen([bin_, "serve", "--config", f.name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    elapsed_line = None
    for line in p.stdout:
        if "secrets read" in line:
            elapsed_line = line
        if "ready" in line:
            break
    t = (time.perf_counter() - t0) * 1000
    p.kill(); p.wait(); os.unlink(f.name)
    ms = None
    if elapsed_line and "elapsed_ms" in elapsed_line:
        ms = int(elapsed_line.split("elapsed_ms=")[1].split()[0].strip(","))
    return t, ms
try:
    for label, flag in (("environment", False), ("Secrets Manager (moto)", True)):
        run(flag)  # warm the page cache
        res = [run(flag) for _ in range(runs)]
        ts = sorted(r[0] for r in res)
        line = f"{label}: start to ready median {statistics.median(ts):.1f} ms, min {ts[0]:.1f}, max {ts[-1]:.1f} (n={runs})"
        reads = [r[1] for r in res if r[1] is not None]
        if reads:
            line += f"; the read itself (elapsed_ms) median {statistics.median(reads)} ms"
        print(line)
finally:
    moto.kill()

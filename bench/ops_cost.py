"""What metrics and request logs add to one verification, in microseconds of CPU per call.

Runs in a fresh interpreter, patched by gevent like a worker and with a multiprocess metrics directory like
gunicorn.conf.py sets up, and prints the cost per call of: updating prometheus_client's multiprocess metrics
directly (what the verification path avoids), the plain-int tally it uses instead, the tally's fold (once per
usage flush, per verification folded), a request's log line as text and as JSON written at once (as pages
write theirs) and buffered for the usage writer's flush (as /v1 calls write theirs), and when /v1 lines are off.
Usage: ``python bench/ops_cost.py [--calls N]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
from gevent import monkey; monkey.patch_all()
import io, logging, sys, time
from portal import metrics
from portal.logs import JsonFormatter, RequestIdFilter, TextFormatter, log_request, request_lines

calls = int(sys.argv[1])

def per_call(fn, n=calls):
    fn()
    best = None
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            fn()
        took = (time.process_time() - start) / n * 1e6
        best = took if best is None else min(best, took)
    return best

assert metrics.MULTIPROCESS
child = metrics.VERIFICATIONS.labels("ok")
def direct():
    metrics.VERIFICATIONS.labels("ok").inc()
    metrics.VERIFICATION_SECONDS.observe(0.0023)
tally = metrics.VerificationTally()
def record():
    tally.record("ok", 0.0023)
print(f"multiprocess counter + histogram, per call: {per_call(direct):.2f} us")
print(f"tally.record (what a verification does):    {per_call(record):.2f} us")
batch = 200  # a busy worker's verifications in one 0.2 s flush interval
def fold():
    for _ in range(batch):
        tally.record("ok", 0.0023)
    tally.fold()
folded = per_call(fold, calls // batch) / batch
print(f"record + fold of {batch}, per verification:     {folded:.2f} us")

out = open(sys.argv[2], "w")
handler = logging.StreamHandler(out)
handler.addFilter(RequestIdFilter())
logger = logging.getLogger("portal")
logger.addHandler(handler)
logger.setLevel(logging.INFO)
def line():
    log_request("0123456789abcdef0123456789abcdef", "POST", "api.verify", 200, 0.00123, None,
                "7f1c2a3e-0b4d-4c55-9e66-1a2b3c4d5e6f")
handler.setFormatter(TextFormatter())
print(f"request log line, text:                      {per_call(line):.2f} us")
handler.setFormatter(JsonFormatter())
print(f"request log line, JSON:                      {per_call(line):.2f} us")
def buffered():
    for _ in range(batch):
        request_lines.add("0123456789abcdef0123456789abcdef", "POST", "api.verify", 200, 0.00123,
                          "7f1c2a3e-0b4d-4c55-9e66-1a2b3c4d5e6f")
    request_lines.write()
handler.setFormatter(TextFormatter())
print(f"/v1 line buffered, {batch} per flush, text:     {per_call(buffered, calls // batch) / batch:.2f} us")
handler.setFormatter(JsonFormatter())
print(f"/v1 line buffered, {batch} per flush, JSON:     {per_call(buffered, calls // batch) / batch:.2f} us")
print("request log line, LOG_API_REQUESTS=0:        0.00 us (one attribute test, no call)")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="procode-metrics-") as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory, "PYTHONPATH": str(ROOT)}
        log_file = Path(directory) / "requests.log"
        subprocess.run([sys.executable, "-c", PROBE, str(args.calls), str(log_file)], env=env, check=True, cwd=ROOT)


if __name__ == "__main__":
    main()

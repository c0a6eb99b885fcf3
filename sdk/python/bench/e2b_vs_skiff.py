"""What E2B compatibility costs: `Sandbox.create` + `commands.run("true")` + `kill` through the
official `e2b` SDK against skiff's E2B-compatible API, divided by the same through skiff's own
SDK, alternating in one run against one fresh daemon. Both take a warm sandbox of the same pool
(an image with bash, which E2B's SDK needs), and each round waits for the pool to be full again,
so that neither waits for a boot.

    python3 sdk/python/bench/e2b_vs_skiff.py --runs 20

Uses target/debug/skiff (or $SKIFF_BIN). Prints p50/p99 of each and the ratio of the p50s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parents[1] / "tests"))
from skiff_sdk import Client, Pool, Sandbox as SkiffSandbox, SkiffError  # noqa: E402
from e2b_image import bash_image_archive  # noqa: E402

REPO = HERE.parents[3]
KEY = "bench_key_0123456789abcdef0123"
POOL = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list, p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def wait_full(client: Client, size: int) -> None:
    deadline = time.monotonic() + 300
    while (p := Pool.get(POOL, client)) is None or p.ready < size:
        if time.monotonic() > deadline:
            sys.exit(f"the pool did not fill: {p}")
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    skiff = os.environ.get("SKIFF_BIN") or str(REPO / "target" / "debug" / "skiff")
    work = tempfile.mkdtemp(prefix="skiff-e2b-bench-")
    env = dict(os.environ, SKIFF_SOCKET=f"{work}/skiff.sock", SKIFF_STATE_DIR=f"{work}/state",
               SKIFF_RUNTIME_DIR=f"{work}/run")
    Path(f"{work}/keys").write_text(KEY + "\n")
    port = free_port()
    log = open(f"{work}/daemon.log", "wb")
    daemon = subprocess.Popen([skiff, "daemon", "--e2b-listen", f"127.0.0.1:{port}",
                               "--e2b-keys", f"{work}/keys"], env=env, stdout=subprocess.DEVNULL,
                              stderr=log)
    try:
        client = Client(f"{work}/skiff.sock")
        deadline = time.monotonic() + 20
        while True:
            try:
                client.request("GET", "/v1/version")
                break
            except (OSError, SkiffError):
                if time.monotonic() > deadline or daemon.poll() is not None:
                    sys.exit("the daemon did not come up: " + Path(f"{work}/daemon.log").read_text())
                time.sleep(0.05)
        archive = bash_image_archive(Path(work), "bench-bash:1")
        subprocess.run([skiff, "image", "import", str(archive)], env=env, check=True,
                       capture_output=True)
        Pool.create(POOL, size=2, image="bench-bash:1", ttl_secs=300, client=client)
        os.environ.update(E2B_API_URL=f"http://127.0.0.1:{port}",
                          E2B_SANDBOX_URL=f"http://127.0.0.1:{port}", E2B_API_KEY=KEY)
        from e2b import Sandbox as E2bSandbox
        own, own_bash, e2b, creates = [], [], [], []
        for i in range(args.runs + 1):
            for which in ("skiff", "skiff-bash", "e2b"):
                wait_full(client, 2)
                start = time.perf_counter()
                if which != "e2b":
                    sb = SkiffSandbox.create(pool=POOL, client=client)
                    # E2B's SDK runs every command in a bash login shell:
                    # the same here isolates what the protocol costs.
                    cmd = "true" if which == "skiff" else ["/bin/bash", "-l", "-c", "true"]
                    r = sb.run(cmd)
                    assert r.exit_code == 0, r
                    sb.kill()
                    took = time.perf_counter() - start
                    if i:
                        (own if which == "skiff" else own_bash).append(took)
                else:
                    sbx = E2bSandbox.create(template=POOL)
                    created = time.perf_counter() - start
                    assert sbx.commands.run("true").exit_code == 0
                    sbx.kill()
                    took = time.perf_counter() - start
                    if i:  # the first round warms both up
                        e2b.append(took)
                        creates.append(created)
        ms = lambda x: f"{x * 1000:8.1f} ms"  # noqa: E731
        print(f"runs: {args.runs} of each, alternating, after one warm-up round")
        print(f"skiff SDK: create + run true + kill  p50 {ms(statistics.median(own))}  p99 {ms(pct(own, 99))}")
        print(f"skiff SDK: same, in bash -l -c       p50 {ms(statistics.median(own_bash))}  p99 {ms(pct(own_bash, 99))}")
        print(f"e2b SDK:   create + run true + kill  p50 {ms(statistics.median(e2b))}  p99 {ms(pct(e2b, 99))}")
        print(f"e2b SDK:   Sandbox.create alone      p50 {ms(statistics.median(creates))}  p99 {ms(pct(creates, 99))}")
        print(f"ratio e2b/skiff (p50): {statistics.median(e2b) / statistics.median(own):.3f}")
        print(f"ratio e2b/skiff, both in bash -l (p50): {statistics.median(e2b) / statistics.median(own_bash):.3f}")
    finally:
        daemon.kill()
        daemon.wait()
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if f"{work}/run".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(int(pid), 9)
                except OSError:
                    pass
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

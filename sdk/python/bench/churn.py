"""Churn: CYCLES create/run/destroy cycles through the SDK against a fresh
daemon, then a check that nothing leaked: processes, sockets and files under
the daemon's directories, TAP devices, VM records, sandboxes.

    python3 sdk/python/bench/churn.py --cycles 200 [--pool-size 2]

Uses target/debug/skiff (or $SKIFF_BIN). Prints timings and the leak check;
exits 1 if anything leaked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skiff_sdk import Client, Pool, Sandbox  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def processes_mentioning(text: str) -> list:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
    return found


def files_under(path: str) -> list:
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.exists())


def vm_cgroups() -> list:
    """skiff's per-VM cgroups below this process's own (v1 memory/cpu, or v2)."""
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in ("memory", "cpu", ""):
            if (c == "" and controllers == "") or (c and c in controllers.split(",")):
                mount = "/sys/fs/cgroup" + (f"/{c}" if c else "")
                parent = Path(mount + path.rstrip("/")) / "skiff"
                if parent.is_dir():
                    found += [str(d) for d in parent.iterdir() if d.is_dir() and d.name.startswith("vm-")]
    return sorted(set(found))


def taps() -> list:
    return sorted(n for n in os.listdir("/sys/class/net") if n.startswith("skt-"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--pool-size", type=int, default=2)
    args = ap.parse_args()
    skiff = os.environ.get("SKIFF_BIN") or str(REPO / "target" / "debug" / "skiff")
    work = tempfile.mkdtemp(prefix="skiff-churn-")
    run, state = f"{work}/run", f"{work}/state"
    env = dict(os.environ, SKIFF_SOCKET=f"{work}/skiff.sock", SKIFF_STATE_DIR=state, SKIFF_RUNTIME_DIR=run)
    daemon = subprocess.Popen([skiff, "daemon"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(f"{work}/daemon.log", "wb"))
    try:
        while not os.path.exists(f"{work}/skiff.sock"):
            time.sleep(0.05)
        client = Client(f"{work}/skiff.sock")
        taps_before = taps()
        cgroups_before = vm_cgroups()
        Pool.create("churn", size=args.pool_size, memory_mib=128, client=client)
        while (Pool.get("churn", client) or Pool("", 0, 0)).ready < args.pool_size:
            time.sleep(0.2)
        # The steady state with a full pool and no sandbox taken.
        procs_idle = len(processes_mentioning(run))
        take_ms, run_ms, total = [], [], time.monotonic()
        for i in range(args.cycles):
            t = time.monotonic()
            with Sandbox.create(pool="churn", client=client, wait=120) as sb:
                take_ms.append((time.monotonic() - t) * 1000)
                t = time.monotonic()
                r = sb.run(f"echo cycle {i}")
                run_ms.append((time.monotonic() - t) * 1000)
                assert r.stdout == f"cycle {i}\n", r
        elapsed = time.monotonic() - total
        Pool.remove("churn", client)
        deadline = time.monotonic() + 60
        while client.request("GET", "/v1/vms") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        leaks = {
            "VM records": [v["name"] for v in client.request("GET", "/v1/vms")],
            "processes (QEMU, helpers)": processes_mentioning(run),
            # The runtime directory keeps its (empty) `vms` folder.
            "files under the runtime dir": [f for f in files_under(run) if f != "vms"]
            if os.path.isdir(run) else [],
            "VM directories": os.listdir(f"{state}/vms") if os.path.isdir(f"{state}/vms") else [],
            "TAP devices": [t for t in taps() if t not in taps_before],
            "cgroups": [c for c in vm_cgroups() if c not in cgroups_before],
        }
        print(f"churn: {args.cycles} create/run/destroy cycles in {elapsed:.1f} s "
              f"({args.cycles / elapsed:.2f} per second, pool of {args.pool_size}, bounded by boots)")
        print(f"  take (wait for a ready sandbox)  p50 {statistics.median(take_ms):8.1f} ms")
        print(f"  run `echo`                        p50 {statistics.median(run_ms):8.1f} ms")
        print(f"  processes with a full idle pool: {procs_idle}")
        leaked = {k: v for k, v in leaks.items() if v}
        for k, v in leaks.items():
            print(f"  leaked {k}: {len(v)}" + (f" {v[:5]}" if v else ""))
        print("result: " + ("LEAKS FOUND" if leaked else "no leaks"))
        return 1 if leaked else 0
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        for pid in processes_mentioning(run):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

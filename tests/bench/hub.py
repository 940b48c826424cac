#!/usr/bin/env python3
"""Hub storage benchmark: the bench harness's workloads (shared/bench, `small` scale), made on
agent A and carried to agent B through a hub alone (A and B know each other without an
address). After each workload, when B holds the same tree and both `tandemctl wait`, it
reports the plain bytes the workload changed, the bytes A uploaded to the hub (sealed bundles
and chunks, from `status`), and the bytes the hub stores (everything under its storage folder)
against the plain size of the tree. The hub collects every second (grace 1 s), so the stored
bytes are what is still needed once both devices caught up.

Usage: tests/bench/hub.py [--bin-dir DIR] [--workdir DIR] [--json FILE] [--scale small|default]
Python 3.11, standard library only. Build first: cargo build --release.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCALES = {
    "small": {"files": 1000, "large": 32 << 20, "rename": 250, "delete": 250},
    "default": {"files": 10000, "large": 256 << 20, "rename": 1000, "delete": 1000},
}


class Node:
    """A tandemd (agent or hub) on its own home."""

    def __init__(self, bins, home, hub=False, config=""):
        self.bins, self.home = bins, home
        home.mkdir(parents=True)
        if config:
            (home / "config.toml").write_text(config)
        args = [bins / "tandemd", "--home", home, "--listen", "127.0.0.1:0"]
        if hub:
            args += ["--role", "hub"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=open(home / "stderr.log", "w"))
        deadline = time.time() + 30
        while True:
            out = self.ctl("id", check=False)
            if out.returncode == 0:
                info = json.loads(out.stdout)
                self.device, self.listen = info["device_id"], info["listen"]
                return
            if time.time() > deadline:
                sys.exit(f"tandemd did not start: {out.stderr}")
            time.sleep(0.1)

    def ctl(self, *args, check=True):
        out = subprocess.run([self.bins / "tandemctl", "--home", self.home, "--json", *args],
                             capture_output=True, text=True)
        if check and out.returncode != 0:
            sys.exit(f"tandemctl {' '.join(map(str, args))} failed: {out.stderr}")
        return out

    def json(self, *args):
        return json.loads(self.ctl(*args).stdout)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def tree_bytes(root):
    total = 0
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".tandem"]
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    return total


def snapshot(root):
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".tandem"]
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = os.path.getsize(p)
    return out


def uploaded(agent):
    total = 0
    for hub in agent.json("status").get("hubs", []):
        for s in hub.get("sources", []):
            total += int(s.get("uploaded_bytes", 0))
    return total


def settle(a, b, a_dir, b_dir, limit=600):
    deadline = time.time() + limit
    while time.time() < deadline:
        a.ctl("wait", "--timeout", "5", check=False)
        b.ctl("wait", "--timeout", "5", check=False)
        if snapshot(a_dir) == snapshot(b_dir):
            ok_a = a.ctl("wait", "--timeout", "5", check=False).returncode == 0
            ok_b = b.ctl("wait", "--timeout", "5", check=False).returncode == 0
            if ok_a and ok_b:
                return
        time.sleep(0.2)
    sys.exit("B did not converge through the hub")


def stored_settled(hub_storage, tries=30):
    """The hub's stored bytes once collection has nothing more to take (two equal looks)."""
    last = -1
    for _ in range(tries):
        now = tree_bytes(hub_storage)
        if now == last:
            return now
        last = now
        time.sleep(2.5)
    return last


def workloads(scale, a_dir, rng):
    def w1():
        for i in range(scale["files"]):
            p = a_dir / f"many/d{i % 25:02}/s{i % 7:02}/t{i % 3}/f{i:05}.dat"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(rng.randbytes(rng.randint(1024, 16 * 1024)))

    def w2():
        p = a_dir / "big/large.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            left = scale["large"]
            while left:
                n = min(left, 1 << 20)
                f.write(rng.randbytes(n))
                left -= n

    def w3():
        p = a_dir / "big/large.bin"
        with open(p, "r+b") as f:
            f.seek(scale["large"] // 2)
            f.write(rng.randbytes(4096))
            f.seek(0, 2)
            f.write(rng.randbytes(1 << 20))

    def w3b():
        p = a_dir / "big/large.bin"
        data = p.read_bytes()
        at = len(data) // 3
        tmp = p.with_suffix(".tmp")
        tmp.write_bytes(data[:at] + rng.randbytes(4096) + data[at:])
        os.replace(tmp, p)

    def w4():
        os.rename(a_dir / "many/d00", a_dir / "many/d00_renamed")

    def w5():
        files = sorted(str(p) for p in (a_dir / "many").rglob("*.dat")
                       if "d00_renamed" not in str(p))
        for p in rng.sample(files, min(scale["delete"], len(files))):
            os.remove(p)

    return [("W1 many-small", w1), ("W2 large", w2), ("W3 edit-large", w3),
            ("W3b insert-large", w3b), ("W4 rename-dir", w4), ("W5 delete", w5)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin-dir", type=Path, default=ROOT / "target/release")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--scale", choices=SCALES, default="small")
    args = p.parse_args()
    if not (args.bin_dir / "tandemd").exists():
        subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="tandem-hub-bench-", dir=args.workdir))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work):
    scale = SCALES[args.scale]
    hub = Node(args.bin_dir, work / "hub",
               hub=True, config="[hub]\ngc_interval_s = 1\nchunk_grace_s = 1\n")
    a = Node(args.bin_dir, work / "a")
    b = Node(args.bin_dir, work / "b")
    for agent in (a, b):
        hub.ctl("peer", "add", agent.device)
        agent.ctl("hub", "add", hub.listen, hub.device)
    a.ctl("peer", "add", b.device)
    b.ctl("peer", "add", a.device)
    a_dir, b_dir = work / "a-data", work / "b-data"
    a_dir.mkdir()
    b_dir.mkdir()
    a.ctl("source", "add", "bench", str(a_dir), "--peer", b.device)
    key = a.json("source", "key", "bench")["key"]
    b.ctl("source", "add", "bench", str(b_dir), "--peer", a.device, "--key", key)
    settle(a, b, a_dir, b_dir)
    storage = work / "hub/storage"
    rng = random.Random(20261206)
    rows = []
    for name, change in workloads(scale, a_dir, rng):
        before_tree = tree_bytes(a_dir)
        before_up = uploaded(a)
        t0 = time.time()
        change()
        settle(a, b, a_dir, b_dir)
        seconds = time.time() - t0
        stored = stored_settled(storage)
        tree = tree_bytes(a_dir)
        rows.append({
            "workload": name,
            "seconds": round(seconds, 2),
            "tree_bytes": tree,
            "changed_bytes": abs(tree - before_tree) if name != "W3 edit-large" else 4096 + (1 << 20),
            "uploaded_bytes": uploaded(a) - before_up,
            "stored_bytes": stored,
        })
    for agent in (a, b, hub):
        agent.stop()
    print(f"\nHub storage, {args.scale} scale: A -> hub -> B (no direct path)\n")
    print("| workload | s | tree MiB | changed MiB | uploaded by A MiB | stored on hub MiB | stored / tree |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    mib = 1 << 20
    for r in rows:
        ratio = r["stored_bytes"] / r["tree_bytes"] if r["tree_bytes"] else 0
        print(f"| {r['workload']} | {r['seconds']:.1f} | {r['tree_bytes'] / mib:.2f} | "
              f"{r['changed_bytes'] / mib:.2f} | {r['uploaded_bytes'] / mib:.2f} | "
              f"{r['stored_bytes'] / mib:.2f} | {ratio:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"scale": args.scale, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Record sync benchmark: an address book of 10,000 contacts kept as one .vcf on agent A
(`vcard-file`) and as one CSV on agent B (`csv-contacts`).

Reports the time to parse each file once (Tandem's codecs, `cargo bench --bench records`),
then changes one phone number, on A and then on B, and reports the bytes that crossed the
wire (both ways, TLS included, counted by a proxy of this script's own on 127.0.0.1 that A
dials B through) and the time until the other device had applied it (the phone in its file,
and `tandemctl wait` passing on both). Targets (issue 11): under 2 KiB sent, applied in under
3x the time of one parse.

Usage: tests/bench/records.py [--contacts N] [--bin-dir DIR] [--workdir DIR] [--json FILE]
Python 3.11, standard library only. Build first: cargo build --release && cargo bench
--no-run -p tandem-daemon --bench records (the script runs both if needed).
"""
import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Proxy:
    """Forwards one listening port to a target, counting the bytes each way."""

    def __init__(self, target):
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.sent = 0  # A -> B
        self.received = 0  # B -> A
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            host, port = self.target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            threading.Thread(target=self.pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, False), daemon=True).start()

    def pump(self, src, dst, forward):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    if forward:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def reset(self):
        with self.lock:
            self.sent = self.received = 0

    def total(self):
        with self.lock:
            return self.sent, self.received


class Agent:
    def __init__(self, bins, home):
        self.bins = bins
        self.home = home
        home.mkdir(parents=True)
        self.proc = subprocess.Popen(
            [bins / "tandemd", "--home", home, "--listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,
            stderr=open(home / "stderr.log", "w"),
        )
        deadline = time.time() + 30
        while True:
            out = self.ctl("id", "--json", check=False)
            if out.returncode == 0:
                info = json.loads(out.stdout)
                self.device, self.listen = info["device_id"], info["listen"]
                return
            if time.time() > deadline:
                sys.exit(f"tandemd did not start: {out.stderr}")
            time.sleep(0.1)

    def ctl(self, *args, check=True):
        out = subprocess.run(
            [self.bins / "tandemctl", "--home", self.home, *map(str, args)],
            capture_output=True,
            text=True,
        )
        if check and out.returncode != 0:
            sys.exit(f"tandemctl {' '.join(map(str, args))} failed: {out.stderr}{out.stdout}")
        return out

    def sequence(self):
        status = json.loads(self.ctl("status", "--json").stdout)
        return sum(src["sequence"] for src in status["sources"])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def contacts_vcf(n, seed):
    rng = random.Random(seed)
    given = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun"]
    family = ["Lima", "Okafor", "Wang", "Novak", "Haddad", "Silva", "Berg", "Tanaka"]
    out = []
    for i in range(n):
        g, f = rng.choice(given), rng.choice(family)
        out.append(
            "BEGIN:VCARD\r\nVERSION:3.0\r\n"
            f"UID:contact-{i:05d}\r\nFN:{g} {f} {i}\r\nN:{f};{g};;;\r\n"
            f"EMAIL;TYPE=INTERNET,HOME:{g.lower()}.{i}@example.org\r\n"
            f"TEL;TYPE=CELL:+1 555 {i:05d}\r\n"
            f"TEL;TYPE=WORK:+1 555 9{i:05d}\r\n"
            f"ORG:Company {i % 97};\r\nTITLE:Role {i % 13}\r\n"
            f"ADR;TYPE=HOME:;;{i} Main Street;Springfield;;{10000 + i};USA\r\n"
            f"NOTE:Met at event {i % 31}\r\n"
            "END:VCARD\r\n"
        )
    return "".join(out)


def wait_until(check, limit, what):
    deadline = time.time() + limit
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.005)
    sys.exit(f"timed out: {what}")


def parse_times(files):
    out = subprocess.run(
        ["cargo", "bench", "-q", "-p", "tandem-daemon", "--bench", "records", "--", *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"parse bench failed: {out.stderr}")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {Path(r["file"]).suffix: r for r in rows}


def holds_when_changed(path, want):
    """A check that reads `path` only when its stat changed since the last look: reading a
    2 MB file every 5 ms would take a core from the agents being timed."""
    seen = [None]

    def check():
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        stat = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stat == seen[0]:
            return False
        seen[0] = stat
        return want in path.read_text(encoding="utf-8")

    return check


def edit_and_time(edited, path_from, old, new, watched, agents, proxy, limit):
    """Changes `old` to `new` in `path_from`; times until `watched` holds `new` and both
    agents' `wait` pass. Returns (ms, bytes A->B, bytes B->A)."""
    # Bytes, not text: Python's text mode would turn every CRLF into LF, a change of every
    # record's bytes rather than of one phone.
    text = path_from.read_bytes().decode("utf-8")
    assert old in text, f"{path_from} lacks {old!r}"
    proxy.reset()
    before = [a.sequence() for a in agents]
    start = time.perf_counter()
    path_from.write_bytes(text.replace(old, new, 1).encode("utf-8"))
    wait_until(holds_when_changed(watched, new), limit, f"{watched} to hold {new}")
    applied = time.perf_counter()
    for a in agents:
        a.ctl("wait", "--timeout", str(limit))
    # A change is a replacement: the old number must be gone on the other side too.
    if old in watched.read_bytes().decode("utf-8"):
        sys.exit(f"{watched} still holds the old value {old!r} beside {new!r}")
    sent, received = proxy.total()
    numbered = [a.sequence() - b for a, b in zip(agents, before)]
    return (applied - start) * 1000.0, sent, received, numbered


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contacts", type=int, default=10_000)
    p.add_argument("--bin-dir", type=Path, default=ROOT / "target/release")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the work folder (homes, logs)")
    args = p.parse_args()
    if not (args.bin_dir / "tandemd").exists():
        subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="tandem-records-bench-", dir=args.workdir))
    try:
        run(args, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work):
    n = args.contacts
    vcf = work / "a-data" / "contacts.vcf"
    csv = work / "b-data" / "contacts.csv"
    vcf.parent.mkdir(parents=True)
    csv.parent.mkdir(parents=True)
    vcf.write_text(contacts_vcf(n, 11), encoding="utf-8")
    a = Agent(args.bin_dir, work / "a-home")
    b = Agent(args.bin_dir, work / "b-home")
    agents = [a, b]
    try:
        proxy = Proxy(b.listen)
        # A dials B through the proxy; B only answers (no address for A), so every byte
        # between them crosses the proxy.
        a.ctl("peer", "add", b.device, f"127.0.0.1:{proxy.port}")
        b.ctl("peer", "add", a.device)
        t0 = time.perf_counter()
        a.ctl("source", "add", "book", vcf, "--format", "vcard-file", "--peer", b.device)
        b.ctl("source", "add", "book", csv, "--format", "csv-contacts", "--peer", a.device)
        for ag in agents:
            ag.ctl("wait", "--timeout", "600")
        wait_until(lambda: csv.exists() and csv.read_text().count("\n") >= n, 600, "B's CSV to fill")
        first_sync = time.perf_counter() - t0
        initial_bytes = sum(proxy.total())
        parse = parse_times([vcf, csv])
        rows = []
        for r in range(args.repeat):
            i = (r * 997 + 123) % n
            old, new = f"+1 555 {i:05d}", f"+1 555 7{r}{i:05d}"
            rows.append(("A .vcf -> B .csv",) + edit_and_time(None, vcf, old, new, csv, agents, proxy, 120))
            j = (r * 991 + 4567) % n
            old, new = f"+1 555 9{j:05d}", f"+1 555 8{r}{j:05d}"
            rows.append(("B .csv -> A .vcf",) + edit_and_time(None, csv, old, new, vcf, agents, proxy, 120))
    finally:
        for ag in agents:
            ag.stop()

    pv, pc = parse[".vcf"]["parse_ms"], parse[".csv"]["parse_ms"]
    print(f"\nRecord sync, {n} contacts: A vcard-file ({parse['.vcf']['bytes']} B), B csv-contacts ({parse['.csv']['bytes']} B)")
    print(f"first sync of the whole book: {first_sync:.2f} s, {initial_bytes} bytes on the wire\n")
    print("| measure | value | target |")
    print("|---|---:|---|")
    print(f"| parse the .vcf once ({parse['.vcf']['records']} records) | {pv:.1f} ms | |")
    print(f"| parse the .csv once ({parse['.csv']['records']} records) | {pc:.1f} ms | |")
    print(f"| write one changed record into the .vcf text (the splice) | {parse['.vcf']['write_one_ms']:.1f} ms | |")
    print(f"| write one changed record into the .csv text (the splice) | {parse['.csv']['write_one_ms']:.1f} ms | |")
    out = []
    for direction, ms, sent, received, numbered in rows:
        # The edited file is read on one side, the change written on the other: the time of
        # one parse of the larger of the two costs is the reference.
        reference = max(pv, pc)
        ratio = ms / reference
        total = sent + received
        print(
            f"| one phone changed, {direction}: applied | {ms:.1f} ms ({ratio:.2f}x a parse) | < 3x |"
        )
        print(
            f"| one phone changed, {direction}: bytes | {total} B ({sent} A->B, {received} B->A; changes numbered: A {numbered[0]}, B {numbered[1]}) | < 2048 B |"
        )
        out.append({"direction": direction, "applied_ms": ms, "ratio_to_parse": ratio, "bytes": total, "sent": sent, "received": received, "numbered": numbered})
    if args.json:
        args.json.write_text(json.dumps({"contacts": n, "parse": parse, "first_sync_s": first_sync, "changes": out}, indent=2))


if __name__ == "__main__":
    main()

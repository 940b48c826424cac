#!/usr/bin/env python3
"""Scale benchmark: one Tandem agent over a large tree of small files (first scan, restart,
unchanged rescan, idle memory), then an initial sync between two agents on 127.0.0.1, with
`rsync -a` of the same tree as the reference.

Drives Tandem only through the command-line contract (tandemd / tandemctl). Python 3.11,
standard library only. See README.md beside this file.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FILES_PER_DIR = 1000
SAMPLE_SIZE = 1000  # files whose contents are compared after the sync
CTL_TIMEOUT_S = 60  # any tandemctl command other than `wait`
STOP_GRACE_S = 10  # SIGTERM, then SIGKILL after this long
RSYNC_RUNS = 3  # the rsync reference is the median of these
POLL_S = 0.5  # pause between two looks at the synced tree when `wait` said 0 too early
IDLE_SAMPLE_S = 1.0
IDLE_LIMIT_S = 30.0  # idle RSS is reported after this long even if it still moves
IDLE_STEADY_MIB = 1.0  # two idle samples this close count as settled
HZ = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[2]
# The agent keeps its own folder at a source's root and writes temp files beside their targets;
# neither is part of the synced tree (the daemon's AGENT_DIR and TEMP_PREFIX).
AGENT_DIR = ".tandem"
TEMP_PREFIX = ".tandem-tmp-"

RSS_TARGET = "< 150 (at 1M files)"


class BenchError(Exception):
    """A failure the benchmark reports and exits on; the message says what and where."""


def log(message):
    print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Trees of seeded small files
# --------------------------------------------------------------------------------------------


def dir_name(i):
    return f"d{i // FILES_PER_DIR:04d}"


def rel_path(i):
    return f"{dir_name(i)}/f{i:07d}"


def content(seed, i):
    """8-16 bytes that depend only on (seed, i), so a sample can be checked without the source."""
    digest = hashlib.blake2b(f"{seed}/{i}".encode(), digest_size=16).digest()
    return digest[: 8 + i % 9]


def make_tree(root, n, seed):
    """Writes n files under root; returns the seconds it took."""
    start = time.monotonic()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i in range(n):
        if i % FILES_PER_DIR == 0:
            os.makedirs(f"{root}/{dir_name(i)}")
        fd = os.open(f"{root}/{rel_path(i)}", flags, 0o644)
        try:
            os.write(fd, content(seed, i))
        finally:
            os.close(fd)
    return time.monotonic() - start


def entries_under(root):
    """Every entry under root (os.DirEntry), leaving out the agent's own folder."""
    stack = [Path(root)]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if folder == root and entry.name == AGENT_DIR:
                    continue
                yield entry
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))


def count_files(root):
    """Regular files under root, leaving out the agent's own folder and temp files."""
    return sum(1 for entry in entries_under(root)
               if entry.is_file(follow_symlinks=False)
               and not entry.name.startswith(TEMP_PREFIX))


def sample_mismatch(root, n, seed):
    """The first sampled file whose contents are wrong or missing, as a message; else None."""
    rng = random.Random(seed)
    for i in sorted(rng.sample(range(n), min(n, SAMPLE_SIZE))):
        path = root / rel_path(i)
        try:
            data = path.read_bytes()
        except OSError as err:
            return f"{rel_path(i)}: {err.strerror}"
        if data != content(seed, i):
            return f"{rel_path(i)}: {len(data)} bytes that differ from the source"
    return None


# --------------------------------------------------------------------------------------------
# /proc readings of one process
# --------------------------------------------------------------------------------------------


def status_mib(pid, key):
    """A kB field of /proc/PID/status (VmHWM, VmRSS) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"/proc/{pid}/status has no {key}")


def reset_peak_rss(pid):
    """Sets VmHWM back to the current RSS, so the next reading is this phase's own peak."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError as err:
        raise BenchError(
            f"cannot reset the peak RSS of pid {pid} ({err.strerror}); run as the agent's user or root"
        ) from None


def cpu_seconds(pid):
    """utime + stime of the process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may contain spaces; the fields after it are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


# --------------------------------------------------------------------------------------------
# Phases and agents
# --------------------------------------------------------------------------------------------


class Phase:
    """A deadline shared by every wait inside one phase."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    def left(self, waiting_for):
        """Seconds until the deadline; raises once it has passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"timed out after {self.timeout:g} s waiting for {waiting_for}")
        return left


def run_phase(name, timeout, body, *args):
    """Runs body(phase, *args); an error names the phase it happened in."""
    log(f"phase: {name}")
    try:
        return body(Phase(timeout), *args)
    except (BenchError, OSError) as err:
        raise BenchError(f"phase '{name}' failed: {err}") from None


@dataclass
class Agent:
    """One tandemd on 127.0.0.1 with its own home, driven through tandemctl."""

    name: str
    bin_dir: Path
    home: Path
    process: subprocess.Popen | None = None
    info: dict = field(default_factory=dict)

    @property
    def pid(self):
        return self.process.pid

    def start(self):
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home.parent / f"tandemd-{self.name}.out", "ab") as out:
            self.process = subprocess.Popen(
                [self.bin_dir / "tandemd", "--home", self.home, "--listen", "127.0.0.1:0"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def stop(self):
        """SIGTERM, then SIGKILL if it has not exited after STOP_GRACE_S."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log(f"agent {self.name} ignored SIGTERM for {STOP_GRACE_S} s; killing it")
            self.process.kill()
            self.process.wait()

    def ctl(self, phase, *args, timeout=CTL_TIMEOUT_S):
        """Runs tandemctl against this agent's home, if the phase has time left; returns the
        finished process."""
        what = f"tandemctl {' '.join(map(str, args))} ({self.name})"
        phase.left(what)
        try:
            return subprocess.run(
                [self.bin_dir / "tandemctl", "--home", self.home, *args], capture_output=True,
                text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{what} did not return within {timeout:g} s") from None

    def ctl_ok(self, phase, *args):
        result = self.ctl(phase, *args)
        if result.returncode != 0:
            raise BenchError(
                f"tandemctl {' '.join(map(str, args))} ({self.name}) exited "
                f"{result.returncode}: {result.stderr.strip()}")

    def wait_ready(self, phase):
        """Polls `tandemctl id` until the control socket answers; keeps the reply in info."""
        while True:
            if self.process.poll() is not None:
                raise BenchError(
                    f"tandemd ({self.name}) exited with {self.process.returncode} while starting")
            result = self.ctl(phase, "--json", "id")
            if result.returncode == 0:
                self.info = json.loads(result.stdout)
                return
            phase.left(f"agent {self.name} to answer on its control socket")
            time.sleep(0.1)

    def wait(self, phase, limit, connected=False):
        """Runs `tandemctl wait` (with --connected if asked) for at most limit seconds (and never
        past the phase's deadline); returns the finished process, whose exit code is 0 (in sync)
        or 4 (not yet)."""
        seconds = min(limit, phase.left(f"agent {self.name} to be in sync"))
        flags = ["--connected"] if connected else []
        # tandemctl enforces its own --timeout; the margin only catches a hung tandemctl.
        result = self.ctl(phase, "wait", *flags, "--timeout", f"{seconds:.1f}",
                          timeout=seconds + 30)
        if result.returncode not in (0, 4):
            raise BenchError(
                f"tandemctl wait ({self.name}) exited {result.returncode}: {result.stderr.strip()}")
        return result

    def in_sync(self, phase, limit):
        return self.wait(phase, limit).returncode == 0

    def wait_in_sync(self, phase, connected=False):
        """Waits until `tandemctl wait` exits 0; fails with what is still pending at the deadline."""
        result = self.wait(phase, phase.timeout, connected)
        if result.returncode != 0:
            pending = (result.stdout + result.stderr).strip()
            raise BenchError(
                f"agent {self.name} not in sync within the phase's {phase.timeout:g} s: {pending}")

    def log_tail(self, lines=20):
        path = self.home / "logs" / "tandemd.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as err:
            return f"(no log at {path}: {err.strerror})"


def readings(agent, cpu_before, files):
    """Peak RSS, current RSS and CPU used since cpu_before (also per file), for one phase of one
    agent."""
    cpu = cpu_seconds(agent.pid) - cpu_before
    return {
        "peak_rss_mib": round(status_mib(agent.pid, "VmHWM"), 1),
        "rss_mib": round(status_mib(agent.pid, "VmRSS"), 1),
        "cpu_s": round(cpu, 2),
        "cpu_us_per_file": round(cpu / files * 1e6, 1),
    }


# --------------------------------------------------------------------------------------------
# Phases on one agent
# --------------------------------------------------------------------------------------------


def first_scan(phase, agent, tree, files):
    """Fresh agent: time from `source add` until `wait` exits 0. The peak RSS is the process's
    whole life, start-up included."""
    agent.start()
    agent.wait_ready(phase)
    cpu = cpu_seconds(agent.pid)
    start = time.monotonic()
    agent.ctl_ok(phase, "source", "add", "s", tree)
    agent.wait_in_sync(phase)
    return {"wall_s": round(time.monotonic() - start, 2), **readings(agent, cpu, files)}


def restart_rescan(phase, agent, files):
    """Time from starting tandemd on the same home until `wait` exits 0 (start-up included);
    a new process, so its peak RSS and CPU cover exactly this phase."""
    agent.stop()
    start = time.monotonic()
    agent.start()
    agent.wait_ready(phase)
    agent.wait_in_sync(phase)
    return {"wall_s": round(time.monotonic() - start, 2), **readings(agent, 0.0, files)}


def unchanged_rescan(phase, agent, files):
    """`rescan` of a tree that has not changed, until `wait` exits 0."""
    reset_peak_rss(agent.pid)
    cpu = cpu_seconds(agent.pid)
    start = time.monotonic()
    agent.ctl_ok(phase, "rescan", "s")
    agent.wait_in_sync(phase)
    return {"wall_s": round(time.monotonic() - start, 2), **readings(agent, cpu, files)}


def idle(phase, agent):
    """RSS once it stops moving (two samples within IDLE_STEADY_MIB), or after IDLE_LIMIT_S."""
    start = time.monotonic()
    previous = status_mib(agent.pid, "VmRSS")
    while True:
        phase.left("the idle agent's RSS")
        time.sleep(IDLE_SAMPLE_S)
        current = status_mib(agent.pid, "VmRSS")
        settled = abs(current - previous) < IDLE_STEADY_MIB
        if settled or time.monotonic() - start > IDLE_LIMIT_S:
            return {"rss_mib": round(current, 1), "settled": settled,
                    "after_s": round(time.monotonic() - start, 1)}
        previous = current


# --------------------------------------------------------------------------------------------
# Initial sync between two agents, and the rsync reference
# --------------------------------------------------------------------------------------------


def ensure_tool(binary, package):
    """The path of binary; when it is missing and this runs as root, Debian's package is
    installed with apt-get first. Raises BenchError naming the package when that cannot be done."""
    if shutil.which(binary):
        return shutil.which(binary)
    if os.geteuid() != 0:
        raise BenchError(f"{binary} is missing and this is not root: install the Debian package "
                         f"{package} (apt-get install {package})")
    log(f"installing {package} with apt-get")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(command, capture_output=True, text=True,
                                env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if result.returncode != 0:
            raise BenchError(f"{' '.join(command)} failed, so {binary} (Debian package "
                             f"{package}) is missing: {result.stderr[-300:]}")
    if not shutil.which(binary):
        raise BenchError(f"the Debian package {package} installed no {binary}")
    return shutil.which(binary)


def ensure_rsync():
    """The rsync binary, installed with apt-get when missing and running as root; else None."""
    try:
        return ensure_tool("rsync", "rsync")
    except BenchError as err:
        log(f"{err}; skipping the rsync reference")
        return None


def rsync_reference(phase, src, dst, remove=True, exclude=()):
    """Wall time of `rsync -a SRC/ DST/` into a fresh folder, removed afterwards unless remove is
    False, leaving out the top-level names in exclude; None when rsync is unavailable."""
    rsync = ensure_rsync()
    if rsync is None:
        return None
    start = time.monotonic()
    try:
        result = subprocess.run([rsync, "-a", *(f"--exclude=/{name}" for name in exclude),
                                 f"{src}/", f"{dst}/"], capture_output=True, text=True,
                                timeout=phase.left("rsync"))
    except subprocess.TimeoutExpired:
        raise BenchError(f"rsync did not finish within {phase.timeout:g} s") from None
    wall = time.monotonic() - start
    if result.returncode != 0:
        raise BenchError(f"rsync exited {result.returncode}: {result.stderr[-500:]}")
    if remove:
        shutil.rmtree(dst)  # tmpfs holds it in memory, and the agents need that room next
    return {"wall_s": round(wall, 2)}


def tree_shortfall(dst, n, seed):
    """What B's tree still lacks, as a message; None once it holds exactly the n files and the
    sampled ones have the right contents."""
    found = count_files(dst)
    if found != n:
        return f"B has {found:,} of {n:,} files"
    mismatch = sample_mismatch(dst, n, seed)
    return mismatch and f"B has every file, but {mismatch}"


def newest_change(root):
    """The newest status change (ctime, in seconds since the epoch) of anything under root,
    leaving out the agent's own folder: renaming a file into place sets it, so it tells when
    the last file arrived."""
    newest = max((entry.stat(follow_symlinks=False).st_ctime_ns for entry in entries_under(root)),
                 default=0)
    return newest / 1e9


def wait_synced(phase, a, b, shortfall, tree):
    """Waits until `tandemctl wait` exits 0 on B and on A and shortfall() (what B's tree still
    lacks, as a message) says None; returns when the sync ended, in time.time() seconds: the
    later of the moment both waits had returned and the newest change in B's tree (its folder
    `tree`). Looking over the tree takes time the sync did not, so it is left out; a `wait`
    that returned before the last file arrived is still caught, by the file's ctime."""
    # `wait` can exit 0 before the peers have connected, so the tree itself is the last word.
    missing = "not looked at yet"
    while True:
        if b.in_sync(phase, 10) and a.in_sync(phase, 10):
            waited = time.time()
            missing = shortfall()
            if missing is None:
                return max(waited, newest_change(tree))
        phase.left(f"B's tree to hold every file (last look: {missing})")
        time.sleep(POLL_S)


def initial_sync(phase, a, b, src, dst, n, seed):
    """A shares src with B, whose folder starts empty; time until both agents say in sync and
    B's tree holds every file with the right contents."""
    for agent in (a, b):
        agent.start()
        agent.wait_ready(phase)
    for agent, other in ((a, b), (b, a)):
        agent.ctl_ok(phase, "peer", "add", other.info["device_id"], other.info["listen"])
    dst.mkdir()
    for agent in (a, b):
        reset_peak_rss(agent.pid)
    cpu = {agent.name: cpu_seconds(agent.pid) for agent in (a, b)}
    start = time.time()
    a.ctl_ok(phase, "source", "add", "s2", src, "--peer", b.info["device_id"])
    b.ctl_ok(phase, "source", "add", "s2", dst, "--peer", a.info["device_id"])
    end = wait_synced(phase, a, b, lambda: tree_shortfall(dst, n, seed), dst)
    result = {"wall_s": round(end - start, 2)}
    for agent in (a, b):
        result[agent.name] = readings(agent, cpu[agent.name], n)
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def table(results):
    phases, sync, rsync = results["phases"], results["phases"]["initial sync"], results["rsync"]
    rows = []
    if "idle" in phases:  # not with --only-sync
        for name, target in (("first scan", ""), ("restart + rescan", "≤ 13 (tmpfs, 1M files)"),
                             ("unchanged rescan", "≤ 7.4 (warm, tmpfs, 1M files)")):
            rows.append((name, "wall s", phases[name]["wall_s"], target))
            rows.append((name, "peak RSS MiB", phases[name]["peak_rss_mib"], RSS_TARGET))
        settled = "" if phases["idle"]["settled"] else f" (still moving after {IDLE_LIMIT_S:g} s)"
        rows.append(("idle", "RSS MiB", f"{phases['idle']['rss_mib']}{settled}", RSS_TARGET))
    rows.append(("initial sync", "wall s", sync["wall_s"], ""))
    for agent in ("A", "B"):
        rows.append(("initial sync", f"CPU s {agent}", sync[agent]["cpu_s"], ""))
        rows.append(("initial sync", f"CPU µs/file {agent}", sync[agent]["cpu_us_per_file"], ""))
        rows.append(("initial sync", f"peak RSS MiB {agent}", sync[agent]["peak_rss_mib"],
                     RSS_TARGET))
    if rsync is None:
        rows.append(("initial sync", "rsync -a wall s", "skipped (no rsync)", ""))
    else:
        runs = ", ".join(f"{r:g}" for r in rsync["runs_s"])
        rows.append(("initial sync", f"rsync -a wall s (median of {runs})", rsync["wall_s"], ""))
        rows.append(("initial sync", "Tandem / rsync", f"{sync['wall_s'] / rsync['wall_s']:.2f}",
                     "≤ 2"))
    config, generation = results["config"], results["generation_s"]
    scan = (f"{config['files']:,} files (generated in {generation['scan_tree']} s), "
            if "scan_tree" in generation else "")
    lines = [
        f"Tandem scale benchmark: {scan}initial sync of {config['sync_files']:,} "
        f"files ({generation['sync_tree']} s); tandemd {config['version']} from "
        f"{config['bin_dir']}; trees in {config['workdir']}",
        "",
        "| phase | metric | value | target |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {phase} | {metric} | {value} | {target} |" for phase, metric, value, target in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def default_bin_dir():
    release = REPO / "target" / "release"
    return release if (release / "tandemd").exists() else REPO / "target" / "debug"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000,
                        help="files in the tree one agent scans (default 1,000,000)")
    parser.add_argument("--sync-files", type=int, default=200_000,
                        help="files in the tree synced from agent A to agent B (default 200,000)")
    parser.add_argument("--bin-dir", type=Path, default=default_bin_dir(),
                        help="folder with tandemd and tandemctl (default: target/release if "
                             "built, else target/debug)")
    parser.add_argument("--workdir", type=Path, default=Path("/dev/shm"),
                        help="where the temp folder goes (default /dev/shm, a tmpfs)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds each phase may take before the run fails (default 1800)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the file contents")
    parser.add_argument("--json", type=Path, help="also write the raw numbers to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--only-sync", action="store_true",
                        help="run only the rsync reference and the initial sync (no first scan, "
                             "restart, unchanged rescan or idle; --files is then unused)")
    args = parser.parse_args()
    for binary in ("tandemd", "tandemctl"):
        if not os.access(args.bin_dir / binary, os.X_OK):
            parser.error(f"{args.bin_dir / binary} is missing; build it or pass --bin-dir")
    if args.files < 1 or args.sync_files < 1:
        parser.error("--files and --sync-files must be at least 1")
    return args


def run(args, base, agents):
    """Every phase in order; returns the results. Agents it starts are appended to agents."""
    scan_tree, sync_src = base / "scan-tree", base / "sync-a"
    generation, phases, solo = {}, {}, None
    if not args.only_sync:
        log(f"generating {args.files:,} files in {scan_tree}")
        generation["scan_tree"] = round(make_tree(scan_tree, args.files, args.seed), 2)
    log(f"generating {args.sync_files:,} files in {sync_src}")
    # A different seed: the two trees should not share content.
    generation["sync_tree"] = round(make_tree(sync_src, args.sync_files, args.seed + 1), 2)

    if not args.only_sync:
        solo = Agent("S", args.bin_dir, base / "home-s")
        agents.append(solo)
        phases = {
            "first scan": run_phase("first scan", args.timeout, first_scan, solo, scan_tree,
                                    args.files),
            "restart + rescan": run_phase("restart + rescan", args.timeout, restart_rescan, solo,
                                          args.files),
            "unchanged rescan": run_phase("unchanged rescan", args.timeout, unchanged_rescan,
                                          solo, args.files),
            "idle": run_phase("idle", args.timeout, idle, solo),
        }
        solo.stop()

    # rsync first: once A has the source, the agent's own folder sits inside the tree. One
    # rsync of 200,000 files varied from 3 to 9 s here on a busy machine; the median of a few
    # is the reference.
    runs = [run_phase(f"rsync reference {i + 1}/{RSYNC_RUNS}", args.timeout, rsync_reference,
                      sync_src, base / "rsync-dst") for i in range(RSYNC_RUNS)]
    rsync = None if None in runs else {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "runs_s": [r["wall_s"] for r in runs]}
    a, b = Agent("A", args.bin_dir, base / "home-a"), Agent("B", args.bin_dir, base / "home-b")
    agents += [a, b]
    phases["initial sync"] = run_phase("initial sync", args.timeout, initial_sync, a, b, sync_src,
                                       base / "sync-b", args.sync_files, args.seed + 1)
    # With --only-sync there is no solo agent; A runs the same binary.
    version = (solo or a).info.get("version", "?")
    config = {"files": None if args.only_sync else args.files, "sync_files": args.sync_files,
              "seed": args.seed, "bin_dir": str(args.bin_dir), "workdir": str(args.workdir),
              "version": version, "timeout_s": args.timeout, "only_sync": args.only_sync}
    return {"config": config, "generation_s": generation, "phases": phases, "rsync": rsync}


def main():
    args = parse_args()
    # SIGTERM would otherwise end Python without running the finally that stops the agents.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = Path(tempfile.mkdtemp(prefix="tandem-scale-", dir=args.workdir))
    agents = []
    try:
        results = run(args, base, agents)
    except BenchError as err:
        for agent in agents:
            print(f"--- tandemd {agent.name} log tail ({agent.home}):\n{agent.log_tail()}",
                  file=sys.stderr)
        log(f"scale.py: {err}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for agent in agents:
            agent.stop()
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

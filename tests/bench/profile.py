#!/usr/bin/env python3
"""Sync profile: where one small file's time goes on the sending agent (A) and on the receiving
agent (B) during an initial sync of a tree of small files over 127.0.0.1, with `rsync -a` of the
same tree as the reference.

Agent A scans the tree before the profile starts; then perf (CPU samples sorted into buckets) or
strace (syscall counts) watches both tandemd processes for exactly the sync to B. Drives Tandem
only through tandemd / tandemctl, like scale.py, whose helpers it uses. Python 3.11, standard
library only; run as root. See README.md beside this file.
"""

import argparse
import json
import os
import random
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (the folder of this script is put on the path just above)
from scale import Agent, BenchError, log, run_phase  # noqa: E402

FILES_PER_LEAF = 100  # files per leaf folder dNN/sNN/tN
# File sizes by --sizes: the shared bench's W1 (small), or scale.py's sync tree (tiny).
SIZES = {"small": (1024, 16 * 1024), "tiny": (8, 16)}
SIZE_NAMES = {"small": "1–16 KiB", "tiny": "8–16 bytes"}
SOURCE = "s"
PROFILER_START_S = 30  # perf or strace must be watching within this long
PROFILER_STOP_S = 600  # perf may take a while to write a large profile
TOP_SYMBOLS = 15
RSYNC_RUNS = 5  # the reference is the median of these
# Threads that do one job, by the name perf reports (the kernel keeps 15 characters of it).
THREAD_BUCKETS = {
    "tandem-store": "sqlite",  # the daemon's one SQLite connection
    "notify-rs inotify loop"[:15]: "watcher",  # the notify crate's inotify reader
    "tracing-appender"[:15]: "logging",  # tracing-appender's log writer
}
KERNEL_START = 0xFFFF800000000000  # x86-64: addresses from here up are the kernel's

# --------------------------------------------------------------------------------------------
# How a perf sample is put in a bucket (the first step that gives one wins)
#
# 1. The thread, when it does one job: the store thread is "sqlite", the inotify reader is
#    "watcher", the log writer is "logging".
# 2. Owners, looked for in every frame of the stack: an SQLite or rusqlite frame makes the
#    sample "sqlite" (so the database's own file I/O, allocations and wake-ups count as the
#    database, not as file writes); a kernel inotify frame makes it "watcher" (queueing an
#    inotify event for a file the agent touches, and waking the watcher thread).
# 3. The frames from the leaf up: the first frame that matches a rule decides. For one frame
#    the rules are tried in the order of RULES (user-space rules for user frames, kernel rules
#    for kernel frames). Generic helpers match no rule on purpose (core::, alloc:: collections,
#    hashbrown, spin locks, copy_user, page allocation, syscall entry and exit...): their time
#    goes to the nearest caller that matches.
# 4. The leaf names a tandem type in its generic arguments (drop_in_place<tandem::...>):
#    "tandem". Otherwise "other".
# Rust symbols are matched by their crate, the first path segment after any "<" (so
# `<tandem::x::Y as tokio::io::AsyncWrite>::poll_write` is tandem's code). Symbol versions
# (@GLIBC_2.2.5) and compiler suffixes (.isra.0, .constprop.0, .cold) are dropped first.
# With the default frame-pointer call graph, callers in Rust and libc code are often missing
# (they are built without frame pointers), so steps 2 and 3 see mostly the kernel frames and
# the user-space leaf; --call-graph dwarf gives whole stacks.
# --------------------------------------------------------------------------------------------

SQLITE = re.compile(
    r"^<*(rusqlite|libsqlite3_sys)::|^sqlite3|^(btree|pager|pcache1?|wal|vdbe|unix|memjrnl)[A-Z]"
    r"|^(balance_nonroot|balance_quick|robust_open|insertCell|dropCell|fillInCell|"
    r"moveToChild|moveToRoot|moveToLeftmost|getAndInitPage|yy_reduce)$")


def crate(*names):
    return r"^<*(" + "|".join(names) + r")::"


def calls(*names, prefix=r"(__libc_|__GI___libc_|__GI___|__)?"):
    """A libc function (the user-space side of a syscall) by name, with glibc's prefixes."""
    return rf"^{prefix}(" + "|".join(names) + r")(64)?(_nocancel)?$"


FS_SYSCALLS = (
    "open", "openat", "openat2", "creat", "close", "close_range", "read", "pread", "pread64",
    "readv", "preadv", "write", "pwrite", "pwrite64", "pwritev", "fsync", "fdatasync",
    "sync_file_range", "rename", "renameat", "renameat2", "stat", "newstat", "lstat",
    "newlstat", "fstat", "newfstat", "newfstatat", "statx", "getdents64", "unlink", "unlinkat",
    "mkdir", "mkdirat", "rmdir", "link", "linkat", "symlink", "symlinkat", "readlink",
    "readlinkat", "utimensat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown",
    "fchownat", "truncate", "ftruncate", "fallocate", "lseek", "copy_file_range", "fadvise64",
    "faccessat", "faccessat2", "access")
NET_SYSCALLS = ("sendto", "recvfrom", "sendmsg", "recvmsg", "connect", "accept", "accept4",
                "socket", "shutdown", "setsockopt", "getsockopt", "getpeername", "getsockname")
SCHED_SYSCALLS = ("futex", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl",
                  "sched_yield", "nanosleep", "clock_nanosleep", "clone", "clone3", "exit",
                  "set_robust_list", "rseq", "eventfd2")
MEM_SYSCALLS = ("mmap", "munmap", "brk", "madvise", "mprotect", "mremap")


def syscalls(names):
    return r"^(__x64_sys_|__do_sys_|__se_sys_|ksys_|__sys_|___sys_)(" + "|".join(names) + r")$"


def prefixes(*names):
    """Kernel functions whose name starts with one of names followed by _ (or is exactly it),
    with any leading underscores."""
    return r"^_*(" + "|".join(names) + r")(_|$)"


USER, KERNEL = "user", "kernel"
RULES = [
    # bucket, which frames, pattern
    ("alloc", USER,
     calls("malloc", "calloc", "realloc", "free", "cfree", "memalign", "posix_memalign",
           "aligned_alloc", "mmap", "munmap", "madvise", "mremap", "brk", "sbrk",
           prefix=r"(__libc_|__GI___libc_|_int_|__)?")
     + r"|^_*mem(cpy|move|set|cmp)|^(__rustc::)?__(rust|rdl|rg)_(alloc|dealloc|realloc)"
     + r"|^<*alloc::(alloc|raw_vec)::|^(malloc_consolidate|tcache_\w+|unlink_chunk|sysmalloc"
     + r"|_int_\w+|arena_get2)$"),
    ("tls", USER, crate("rustls", "ring", "tokio_rustls", "webpki", "rustls_pki_types")
     + r"|^ring_core_"),
    ("hashing", USER, crate("xxhash_rust", "fastcdc", "sha2", "digest", "blake2", "blake3")
     + r"|xxh3|XXH"),
    ("protobuf", USER, crate("prost", "prost_types", "tonic_prost")
     + r"|^<tandem_proto::\S+ as prost::"),
    ("rpc (tonic/h2)", USER, crate("tonic", "h2", "hyper", "hyper_util", "tower", "tower_layer",
                                   "tower_service", "http", "http_body", "http_body_util",
                                   "tandem_proto")),
    ("watcher", USER, crate("notify", "inotify", "inotify_sys")),
    ("logging", USER, crate("tracing", "tracing_core", "tracing_subscriber", "tracing_appender",
                            "tracing_log", "sharded_slab", "nu_ansi_term")),
    ("network", USER, crate("tokio::net", "tokio::io::poll_evented", "mio::net", "socket2",
                            "std::net", "std::sys::net")
     + "|" + calls("send", "sendto", "sendmsg", "recv", "recvfrom", "recvmsg", "writev", "readv")),
    ("fs syscalls", USER, crate("std::fs", "std::sys::fs", "std::sys::pal::unix::fs", "walkdir",
                                "tokio::fs", "filetime")
     + "|" + calls(*FS_SYSCALLS, "fstatat", "readdir", "opendir", "closedir", "fdopendir",
                   "realpath", "fcntl")),
    ("scheduling", USER, crate("tokio", "mio", "parking_lot", "parking_lot_core",
                               r"crossbeam_\w+", r"futures_\w+", "tokio_stream", "tokio_util",
                               "std::sync", "std::sys::sync", "std::thread::park",
                               "std::sys::pal::unix::futex", "std::sys::pal::unix::thread_parking")
     + "|" + calls("epoll_wait", "epoll_pwait", "epoll_ctl", "syscall", "sched_yield",
                   "nanosleep", "clock_nanosleep", "clock_gettime", r"pthread_\w+",
                   r"__pthread_\w+", r"lll_\w+", "eventfd_write", "eventfd_read")
     + r"|^__vdso_"),
    ("tandem", USER, crate("tandem", "tandemd")),

    ("network", KERNEL,
     prefixes("tcp", "tcp4", "tcp6", "udp", "ip", "ipv4", "ipv6", "ip6", "inet", "inet6", "sk",
              "sock", "skb", "kfree_skb", "consume_skb", "alloc_skb", "napi", "net", "netif",
              "dev_queue_xmit", "dev_hard_start_xmit", "validate_xmit", "sch_direct_xmit",
              "qdisc", "neigh", "nf", "loopback", "process_backlog", "release_sock",
              "lock_sock", "security_socket", "security_sk", "apparmor_socket", "sockfd_lookup")
     + "|" + syscalls(NET_SYSCALLS)),
    ("fs syscalls", KERNEL,
     prefixes("ext4", "jbd2", "shmem", "simple_offset", "simple_lookup", "simple_rename",
              "simple_unlink", "simple_link", "simple_rmdir", "simple_getattr", "simple_setattr",
              "simple_xattr", "simple_inode_init_ts", "vfs", "do_sys_open", "do_sys_openat2",
              "do_filp_open", "do_open", "path", "filename", "link_path_walk", "walk_component",
              "lookup", "d_alloc", "d_lookup", "d_add", "d_instantiate", "d_splice_alias", "dput",
              "dget", "dentry", "dcache", "rename", "do_renameat2", "lock_rename", "fsync",
              "do_fsync", "file", "filemap", "generic_file", "generic_perform_write",
              "generic_write", "generic_permission", "generic_fillattr", "iomap", "mpage",
              "writeback", "wb", "blk", "bio", "submit_bio", "virtblk", "virtio_queue_rq", "nvme",
              "page_cache", "truncate", "inode", "iput", "new_inode", "fput",
              "fsnotify", "do_dentry_open", "may_open", "may_delete", "may_create", "do_statx",
              "vfs_statx", "cp_statx", "do_unlinkat", "do_mkdirat", "do_linkat", "do_utimes",
              "notify_change", "chmod_common", "iterate_dir", "filldir64", "getname", "putname",
              "mnt_want_write", "mnt_drop_write", "touch_atime", "file_update_time",
              "security_file", "security_inode", "security_path", "apparmor_file", "aa_file",
              "fdget", "fd_install", "alloc_fd", "close_fd", "file_close_fd", "get_unused_fd",
              "alloc_empty_file", "init_file", "ramfs", "mark_buffer_dirty", "buffer",
              "block_write", "sync_inode", "sync_file", "xattr", "posix_acl", "fscrypt",
              "dquot")
     + "|" + syscalls(FS_SYSCALLS)),
    ("scheduling", KERNEL,
     prefixes("schedule", "sched", "preempt_schedule", "cond_resched", "finish_task_switch",
              "switch_to", "switch_mm", "switch_mm_irqs_off", "context_switch", "try_to_wake_up",
              "ttwu", "wake_up", "wake_q", "enqueue_task", "dequeue_task", "enqueue_entity",
              "dequeue_entity", "activate_task", "pick_next_task", "put_prev_task",
              "set_next_entity", "update_curr", "update_load_avg", "update_cfs_group",
              "select_task_rq", "select_idle", "psi", "futex", "do_futex", "ep", "do_epoll",
              "eventfd", "hrtimer", "do_nanosleep", "do_sched_yield", "smp_call_function",
              "native_smp_send_reschedule", "x2apic_send_IPI", "default_send_IPI",
              "kick_process", "resched_curr", "check_preempt", "wakeup_preempt", "tick",
              "update_process_times", "task_tick", "irq_work", "sysvec_apic_timer_interrupt",
              "asm_sysvec_apic_timer_interrupt", "sysvec_reschedule_ipi",
              "asm_sysvec_reschedule_ipi", "sysvec_call_function_single",
              "asm_sysvec_call_function_single", "reweight", "place_entity", "pick_eevdf",
              "newidle_balance", "load_balance", "kernel_clone", "copy_process",
              "wake_up_new_task", "do_exit", "rseq")
     + "|" + syscalls(SCHED_SYSCALLS)),
    ("alloc", KERNEL,
     prefixes("asm_exc_page_fault", "exc_page_fault", "do_user_addr_fault", "handle_mm_fault",
              "handle_pte_fault", "do_anonymous_page", "do_wp_page", "wp_page_copy", "do_fault",
              "do_read_fault", "do_pte_missing", "do_huge_pmd_anonymous_page", "do_mmap",
              "mmap_region", "do_munmap", "vm_munmap", "do_vmi_munmap", "do_vmi_align_munmap",
              "vm_mmap_pgoff", "ksys_mmap_pgoff", "do_madvise", "madvise", "zap",
              "unmap_page_range", "unmap_vmas", "tlb_finish_mmu", "flush_tlb_mm_range",
              "do_brk_flags", "mprotect_fixup", "do_mprotect_pkey")
     + "|" + syscalls(MEM_SYSCALLS)),
]
RULES = [(bucket, where, re.compile(pattern)) for bucket, where, pattern in RULES]
BUCKETS = ["sqlite", "fs syscalls", "network", "tls", "protobuf", "rpc (tonic/h2)", "hashing",
           "scheduling", "alloc", "watcher", "logging", "tandem", "other"]


OWNERS = [("sqlite", USER, SQLITE),
          ("watcher", KERNEL, re.compile(prefixes("inotify", "x64_sys_inotify_add_watch",
                                                  "x64_sys_inotify_rm_watch")))]
SUFFIX = re.compile(r"(@@?[A-Z_0-9.]+|(\.(constprop|isra|part|cold|llvm|lto_priv)(\.\d+)?)+)$")
TANDEM_TYPE = re.compile(r"\btandemd?::")


def classify(thread, frames):
    """The bucket of one sample; frames are (is_kernel, symbol), leaf first."""
    if thread in THREAD_BUCKETS:
        return THREAD_BUCKETS[thread]
    frames = [(KERNEL if k else USER, SUFFIX.sub("", sym)) for k, sym in frames]
    for bucket, where, pattern in OWNERS:
        if any(w == where and pattern.search(sym) for w, sym in frames):
            return bucket
    for where, sym in frames:
        for bucket, rule_where, pattern in RULES:
            if rule_where == where and pattern.search(sym):
                return bucket
    if frames and TANDEM_TYPE.search(frames[0][1]):
        return "tandem"
    return "other"


# --------------------------------------------------------------------------------------------
# A W1-shaped tree: small files of seeded random bytes in nested folders
# --------------------------------------------------------------------------------------------


def rel_path(i):
    leaf = i // FILES_PER_LEAF
    return f"d{leaf // 1000:02d}/s{leaf // 10 % 100:02d}/t{leaf % 10}/f{i:05d}.dat"


def make_tree(root, n, seed, sizes_name):
    """Writes n files of seeded random bytes, sized as --sizes says, under root; returns the
    seconds it took and the list of sizes."""
    min_size, max_size = SIZES[sizes_name]
    start = time.monotonic()
    rng = random.Random(seed)
    sizes = []
    for i in range(n):
        path = root / rel_path(i)
        if i % FILES_PER_LEAF == 0:
            path.parent.mkdir(parents=True)
        size = rng.randint(min_size, max_size)
        with open(path, "xb") as f:
            f.write(rng.randbytes(size))
        sizes.append(size)
    return time.monotonic() - start, sizes


def tree_shortfall(src, dst, sizes, seed):
    """What B's tree still lacks, as a message; None once it holds exactly the files of A's,
    each of the right size, and the sampled ones with the same contents."""
    n = len(sizes)
    found = scale.count_files(dst)
    if found != n:
        return f"B has {found:,} of {n:,} files"
    for i, size in enumerate(sizes):
        try:
            got = os.stat(dst / rel_path(i)).st_size
        except OSError as err:
            return f"{rel_path(i)}: {err.strerror}"
        if got != size:
            return f"{rel_path(i)}: {got} bytes, not {size}"
    for i in sorted(random.Random(seed).sample(range(n), min(n, scale.SAMPLE_SIZE))):
        if (dst / rel_path(i)).read_bytes() != (src / rel_path(i)).read_bytes():
            return f"{rel_path(i)}: contents differ from A's"
    return None


def fs_type(path):
    """The file system type of the mount that holds path (tmpfs, ext4, ...)."""
    path, best, kind = os.path.realpath(path), "", "?"
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            mount = fields[1].replace("\\040", " ")
            inside = path == mount or path.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, fields[2]
    return kind


# --------------------------------------------------------------------------------------------
# Profilers: each watches one tandemd for the sync window
# --------------------------------------------------------------------------------------------


class Profiler:
    """A profiling process watching agents, given as {side: pid}. start() returns once it
    watches; stop() ends it cleanly after the window; kill() ends it on any exit path;
    analyse() returns {side: numbers}."""

    def __init__(self, name, pids, folder):
        self.name, self.pids, self.folder = name, pids, folder
        self.process = None
        self.err_path = folder / f"{self.tool}-{name}.err"

    def spawn(self, argv):
        with open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=err)

    def alive(self, what):
        """Raises, with the tail of its stderr, if the profiler has exited."""
        if self.process.poll() is not None:
            raise BenchError(f"{self.tool} ({self.name}) exited with {self.process.returncode} "
                             f"while {what}: {self.err_tail()}")

    def err_tail(self):
        try:
            return self.err_path.read_text(errors="replace").strip()[-800:]
        except OSError:
            return "(no output)"

    def finish(self):
        """SIGINT, the profilers' signal to write what they have; waits until it exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(PROFILER_STOP_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise BenchError(f"{self.tool} ({self.name}) did not finish within "
                             f"{PROFILER_STOP_S} s of SIGINT; killed it") from None

    def kill(self):
        """For exit paths: SIGINT, then SIGKILL after a short grace."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(scale.STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Perf(Profiler):
    """perf record of cpu-clock samples with call chains, either of the whole machine (scope
    "system"; samples are then split by process) or of one process (scope "task", `-p PID`).
    It starts with its events off and is switched on and off through its control FIFO, so the
    profile covers exactly the window."""

    tool, package = "perf", "linux-perf"

    def __init__(self, name, pids, folder, args):
        super().__init__(name, pids, folder)
        self.data = folder / f"perf-{name}.data"
        self.freq, self.call_graph, self.scope = args.freq, args.call_graph, args.perf_scope
        self.ctl_fd = self.ack_fd = None

    def start(self, phase):
        ctl, ack = self.folder / f"perf-{self.name}.ctl", self.folder / f"perf-{self.name}.ack"
        os.mkfifo(ctl)
        os.mkfifo(ack)
        # Open for reading first: perf opens the ack FIFO for writing, which waits for a reader.
        self.ack_fd = os.open(ack, os.O_RDONLY | os.O_NONBLOCK)
        graph = ["-g"] if self.call_graph == "fp" else ["--call-graph", "dwarf"]
        pids = ",".join(map(str, self.pids.values()))
        target = ["-a"] if self.scope == "system" else ["-p", pids]
        self.spawn([scale.ensure_tool("perf", self.package), "record", "-e", "cpu-clock",
                    "-F", str(self.freq), *graph, *target, "-o", str(self.data),
                    "--delay", "-1", "--control", f"fifo:{ctl},{ack}"])
        self.ctl_fd = os.open(ctl, os.O_RDWR)  # never waits for the other end
        self.command("enable", phase)

    def command(self, word, phase):
        """Sends enable or disable and waits for perf's ack."""
        os.write(self.ctl_fd, word.encode() + b"\n")
        deadline = time.monotonic() + min(PROFILER_START_S, phase.left(f"perf to {word}"))
        answer = b""
        while b"ack" not in answer:
            self.alive(f"asked to {word}")
            if time.monotonic() > deadline:
                raise BenchError(f"perf ({self.name}) did not acknowledge '{word}' within "
                                 f"{PROFILER_START_S} s: {self.err_tail()}")
            ready, _, _ = select.select([self.ack_fd], [], [], 0.1)
            if ready:
                chunk = os.read(self.ack_fd, 64)
                answer += chunk
                if not chunk:  # no writer yet: perf is still starting
                    time.sleep(0.01)

    def stop(self, phase):
        self.command("disable", phase)
        self.finish()
        for fd in (self.ctl_fd, self.ack_fd):
            os.close(fd)
        if self.process.returncode not in (0, -signal.SIGINT) or not self.data.exists():
            raise BenchError(f"perf record ({self.name}) exited {self.process.returncode}: "
                             f"{self.err_tail()}")

    def samples(self):
        """Yields (pid, thread, period_ns, frames) per sample of the watched processes, frames
        as (is_kernel, symbol, dso), leaf first."""
        argv = [scale.ensure_tool("perf", self.package), "script", "-i", str(self.data),
                "--pid", ",".join(map(str, self.pids.values())),
                "-F", "comm,pid,tid,period,ip,sym,dso", "--no-inline"]
        header = re.compile(r"^(?P<thread>\S.*?)\s+(?P<pid>\d+)/(?P<tid>\d+)\s+(?P<period>\d+)\s*$")
        frame = re.compile(r"^\s+(?P<ip>[0-9a-f]+)\s+(?P<sym>.*?)\s+\((?P<dso>[^()]*)\)\s*$")
        with open(self.folder / f"perf-script-{self.name}.err", "wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                    errors="replace")
            current = None
            for line in proc.stdout:
                if not line[0].isspace() and (m := header.match(line)):
                    if current:
                        yield current
                    current = (int(m["pid"]), m["thread"], int(m["period"]), [])
                elif current and (m := frame.match(line)):
                    is_kernel = int(m["ip"], 16) >= KERNEL_START
                    current[3].append((is_kernel, m["sym"], m["dso"]))
            if current:
                yield current
            if proc.wait() != 0:
                raise BenchError(f"perf script ({self.name}) exited {proc.returncode}")

    def analyse(self):
        side_of = {pid: side for side, pid in self.pids.items()}
        tallies = {side: {"samples": 0, "ns": 0, "buckets": Counter(), "threads": Counter(),
                          "leaves": Counter(), "leaf_buckets": {}}
                   for side in self.pids}
        for pid, thread, period, frames in self.samples():
            if pid not in side_of:
                continue
            t = tallies[side_of[pid]]
            bucket = classify(thread, [(k, sym) for k, sym, _ in frames])
            t["samples"] += 1
            t["ns"] += period
            t["buckets"][bucket] += period
            t["threads"][thread] += period
            if frames:
                kernel, sym, dso = frames[0]
                leaf = (sym, "[kernel]" if kernel else os.path.basename(dso))
            else:
                leaf = ("[no stack]", "")
            t["leaves"][leaf] += period
            t["leaf_buckets"].setdefault(leaf, Counter())[bucket] += period
        return {side: {
            "samples": t["samples"],
            "cpu_ms": round(t["ns"] / 1e6, 1),
            "buckets_ms": {b: round(t["buckets"][b] / 1e6, 2) for b in BUCKETS if t["buckets"][b]},
            "threads_ms": {name: round(ns / 1e6, 2) for name, ns in t["threads"].most_common()},
            "top_leaves": [
                {"symbol": sym, "dso": dso, "ms": round(ns / 1e6, 2),
                 "bucket": t["leaf_buckets"][(sym, dso)].most_common(1)[0][0]}
                for (sym, dso), ns in t["leaves"].most_common(TOP_SYMBOLS)],
        } for side, t in tallies.items()}


class Strace(Profiler):
    """strace -c -f of one agent: a count of every syscall of every thread, new threads
    included."""

    tool, package = "strace", "strace"

    def __init__(self, name, pids, folder):
        super().__init__(name, pids, folder)
        (self.side, self.pid), = pids.items()
        self.out = folder / f"strace-{name}.txt"

    def start(self, phase):
        self.spawn([scale.ensure_tool("strace", self.package), "-c", "-f", "-p", str(self.pid),
                    "-o", str(self.out)])
        deadline = time.monotonic() + min(PROFILER_START_S, phase.left("strace to attach"))
        while not self.attached():
            self.alive("attaching")
            if time.monotonic() > deadline:
                raise BenchError(f"strace ({self.name}) did not attach to every thread of pid "
                                 f"{self.pid} within {PROFILER_START_S} s: {self.err_tail()}")
            time.sleep(0.02)

    def attached(self):
        """True once every thread of the agent is traced by this strace."""
        tracer = f"TracerPid:\t{self.process.pid}\n"
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                if tracer not in (task / "status").read_text():
                    return False
            except FileNotFoundError:  # the thread has just exited
                continue
        return True

    def stop(self, phase):
        self.finish()
        if not self.out.exists():
            raise BenchError(f"strace ({self.name}) wrote no summary: {self.err_tail()}")

    def analyse(self):
        """{side: {"syscalls": {name: {calls, errors}}}} from the -c table, most calls first."""
        counts = {}
        for line in self.out.read_text().splitlines():
            fields = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(fields) in (5, 6) and fields[0][0].isdigit() and fields[-1] != "total":
                counts[fields[-1]] = {"calls": int(fields[3]),
                                      "errors": int(fields[4]) if len(fields) == 6 else 0}
        return {self.side: {"syscalls": dict(sorted(counts.items(),
                                                    key=lambda kv: -kv[1]["calls"]))}}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def peer_connected(phase, agent, other):
    result = agent.ctl(phase, "--json", "status")
    if result.returncode != 0:
        raise BenchError(f"tandemctl status ({agent.name}) exited {result.returncode}: "
                         f"{result.stderr.strip()}")
    peers = json.loads(result.stdout).get("peers", [])
    return any(p.get("device_id") == other.info["device_id"] and p.get("connected")
               for p in peers)


def prepare(phase, a, b, src):
    """Both agents up and connected, A's source scanned and settled; B has no source yet."""
    for agent in (a, b):
        agent.start()
        agent.wait_ready(phase)
    for agent, other in ((a, b), (b, a)):
        agent.ctl_ok(phase, "peer", "add", other.info["device_id"], other.info["listen"])
    a.ctl_ok(phase, "source", "add", SOURCE, src, "--peer", b.info["device_id"])
    # B does not share the source yet, so only `wait --connected` can say A is settled.
    a.wait_in_sync(phase, connected=True)
    while not (peer_connected(phase, a, b) and peer_connected(phase, b, a)):
        phase.left("A and B to be connected")
        time.sleep(0.1)


def prepare_live(phase, a, b, a_root, b_root):
    """Both agents up, connected and sharing the source, both folders empty and settled."""
    for agent in (a, b):
        agent.start()
        agent.wait_ready(phase)
    for agent, other in ((a, b), (b, a)):
        agent.ctl_ok(phase, "peer", "add", other.info["device_id"], other.info["listen"])
    for agent, other, root in ((a, b, a_root), (b, a, b_root)):
        root.mkdir()
        agent.ctl_ok(phase, "source", "add", SOURCE, root, "--peer", other.info["device_id"])
    while not (peer_connected(phase, a, b) and peer_connected(phase, b, a)):
        phase.left("A and B to be connected")
        time.sleep(0.1)
    for agent in (a, b):
        agent.wait_in_sync(phase, connected=True)


def profiled_sync(phase, a, b, src, dst, sizes, seed, profilers, start_sync):
    """start_sync() starts the sync; time until `wait` exits 0 on both and B's tree matches,
    with the profilers watching both agents for exactly that window."""
    os.sync()  # writeback of the generated tree and of A's scan stays out of the window
    for profiler in profilers:
        profiler.start(phase)
    for agent in (a, b):
        scale.reset_peak_rss(agent.pid)
    cpu = {agent.name: scale.cpu_seconds(agent.pid) for agent in (a, b)}
    start = time.time()
    start_sync(phase)
    end = scale.wait_synced(phase, a, b, lambda: tree_shortfall(src, dst, sizes, seed), dst)
    result = {"wall_s": round(end - start, 3)}
    for agent in (a, b):
        result[agent.name] = scale.readings(agent, cpu[agent.name], len(sizes))
    for profiler in profilers:
        profiler.stop(phase)
    return result


def run(args, base, data_dir, agents, profilers):
    a, b = Agent("A", args.bin_dir, base / "home-a"), Agent("B", args.bin_dir, base / "home-b")
    agents += [a, b]
    if args.shape == "initial":
        src, dst = base / "a", base / "b"
        log(f"generating {args.files:,} files in {src}")
        seconds, sizes = make_tree(src, args.files, args.seed, args.sizes)
        run_phase("A's scan, outside the profile", args.timeout, prepare, a, b, src)

        def start_sync(phase):
            dst.mkdir()
            b.ctl_ok(phase, "source", "add", SOURCE, dst, "--peer", a.info["device_id"])
    else:
        # The shared bench's W1: the tree is moved into A's watched folder in one rename.
        incoming = base / "incoming"
        src, dst = base / "a" / "tree", base / "b" / "tree"
        log(f"generating {args.files:,} files in {incoming}")
        seconds, sizes = make_tree(incoming, args.files, args.seed, args.sizes)
        run_phase("both sources settled, outside the profile", args.timeout, prepare_live, a, b,
                  base / "a", base / "b")

        def start_sync(_phase):
            incoming.rename(src)
    pids = {agent.name: agent.pid for agent in (a, b)}
    if args.mode == "perf" and args.perf_scope == "system":
        profilers.append(Perf("AB", pids, data_dir, args))
    elif args.mode == "perf":
        profilers += [Perf(side, {side: pid}, data_dir, args) for side, pid in pids.items()]
    elif args.mode == "strace":
        profilers += [Strace(side, {side: pid}, data_dir) for side, pid in pids.items()]
    sync = run_phase("sync", args.timeout, profiled_sync, a, b, src, dst, sizes, args.seed,
                     profilers, start_sync)
    for agent in agents:
        agent.stop()  # rsync and the analysis below run on a quiet machine
    # After the sync, and nothing deleted before it: ext4 without a journal skips inodes freed
    # in the last minute or more when it creates files, which slows down whoever creates next.
    # A single rsync of a small tree varies by tens of percent; the median of a few is the
    # reference. The agent's own folder in A's tree is left out.
    os.sync()
    runs = [run_phase(f"rsync reference {i + 1}/{RSYNC_RUNS}", args.timeout,
                      scale.rsync_reference, src, base / f"rsync-{i + 1}", False,
                      [scale.AGENT_DIR]) for i in range(RSYNC_RUNS)]
    rsync = None if None in runs else {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "runs_s": [r["wall_s"] for r in runs]}
    profiles = {}
    for profiler in profilers:
        log(f"reading the {profiler.tool} profile ({profiler.name})")
        profiles.update(profiler.analyse())
    config = {"shape": args.shape, "sizes": args.sizes, "files": args.files,
              "bytes": sum(sizes), "seed": args.seed,
              "bin_dir": str(args.bin_dir), "workdir": str(args.workdir),
              "fs": fs_type(args.workdir), "mode": args.mode, "freq": args.freq,
              "call_graph": args.call_graph, "perf_scope": args.perf_scope,
              "version": a.info.get("version", "?")}
    return {"config": config, "generation_s": round(seconds, 2), "sync": sync, "rsync": rsync,
            "profiles": profiles}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

SIDES = (("A", "sender"), ("B", "receiver"))
STRACE_HIGHLIGHTS = ("fsync", "fdatasync", "rename", "renameat", "renameat2", "openat", "close",
                     "futex", "write", "writev", "pwrite64", "sendmsg", "sendto", "recvfrom",
                     "recvmsg", "read", "pread64", "statx", "newfstatat", "lstat", "epoll_wait")


def us_per_file(ms, files):
    return f"{ms * 1000 / files:,.1f}"


def report(results):
    config, sync, rsync = results["config"], results["sync"], results["rsync"]
    n = config["files"]
    scope = "-a, split by agent" if config["perf_scope"] == "system" else "-p PID per agent"
    profiler = {"perf": f"perf record -e cpu-clock -F {config['freq']} ({scope}; call graph: "
                        f"{config['call_graph']})",
                "strace": "strace -c -f -p PID per agent", "none": "none"}[config["mode"]]
    lines = [
        f"Tandem sync profile: {n:,} files of {SIZE_NAMES[config['sizes']]} "
        f"({config['bytes'] / 2**20:,.1f} MiB), "
        f"A → B over 127.0.0.1; tandemd {config['version']} from {config['bin_dir']}; trees in "
        f"{config['workdir']} ({config['fs']}); profiler: {profiler}",
    ]
    if config["mode"] == "strace":
        lines.append("strace stops the agents at every syscall: the wall and CPU times below "
                     "are NOT measurements, only the syscall counts are.")
    elif config["mode"] == "perf" and config["perf_scope"] == "system":
        lines.append("Wall and CPU include perf's sampling overhead (about 10% at 4999 Hz on a "
                     "VM); --mode none gives the clean times.")
    elif config["mode"] == "perf":
        lines.append("Per-process cpu-clock sampling re-arms a timer at every context switch: on "
                     "a VM this can double the agents' CPU and inflate 'scheduling'.")
    lines += ["", "| | A (sender) | B (receiver) |", "|---|---:|---:|"]
    lines.append(f"| CPU s (/proc) | {sync['A']['cpu_s']} | {sync['B']['cpu_s']} |")
    lines.append(f"| CPU µs per file (/proc) | {sync['A']['cpu_us_per_file']:,} | "
                 f"{sync['B']['cpu_us_per_file']:,} |")
    lines.append(f"| peak RSS MiB | {sync['A']['peak_rss_mib']} | {sync['B']['peak_rss_mib']} |")
    lines += ["", "| | value |", "|---|---:|",
              f"| sync wall s | {sync['wall_s']} |",
              f"| wall µs per file | {sync['wall_s'] * 1e6 / n:,.0f} |"]
    if rsync is None:
        lines.append("| rsync -a wall s | skipped (no rsync) |")
    else:
        lines.append(f"| rsync -a wall s (same tree to a fresh folder, no fsync; median of "
                     f"{len(rsync['runs_s'])}) | {rsync['wall_s']} |")
        ratio = sync["wall_s"] / rsync["wall_s"] if rsync["wall_s"] else float("inf")
        lines.append(f"| Tandem / rsync | {ratio:.1f} |")
    profiles = results["profiles"]
    if config["mode"] == "perf":
        for side, role in SIDES:
            lines += perf_section(side, role, profiles[side], sync[side], n)
    elif config["mode"] == "strace":
        lines += strace_section(profiles, n)
    return "\n".join(lines)


def perf_section(side, role, profile, readings, n):
    total = profile["cpu_ms"] or 1
    lines = ["", f"### {side} ({role}): {profile['samples']:,} samples, {profile['cpu_ms']:,.0f} "
                 f"ms CPU sampled (/proc: {readings['cpu_s'] * 1000:,.0f} ms), "
                 f"{us_per_file(profile['cpu_ms'], n)} µs CPU per file",
             "", "| bucket | % | µs/file |", "|---|---:|---:|"]
    for bucket, ms in sorted(profile["buckets_ms"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {bucket} | {ms * 100 / total:.1f} | {us_per_file(ms, n)} |")
    lines.append(f"| total | 100.0 | {us_per_file(profile['cpu_ms'], n)} |")
    threads = ", ".join(f"{t} {ms * 100 / total:.0f}%"
                        for t, ms in list(profile["threads_ms"].items())[:6])
    lines += ["", f"Threads: {threads}", "",
              f"Top {TOP_SYMBOLS} leaf symbols ({side}):", "",
              "| % | µs/file | symbol | dso | bucket (most samples) |", "|---:|---:|---|---|---|"]
    for leaf in profile["top_leaves"]:
        symbol = leaf["symbol"] if len(leaf["symbol"]) <= 100 else leaf["symbol"][:97] + "..."
        symbol = symbol.replace("|", "\\|")
        lines.append(f"| {leaf['ms'] * 100 / total:.1f} | {us_per_file(leaf['ms'], n)} | "
                     f"`{symbol}` | {leaf['dso']} | {leaf['bucket']} |")
    return lines


def strace_section(profiles, n):
    counts = {side: profiles[side]["syscalls"] for side, _ in SIDES}

    def per_file(side, name):
        return counts[side].get(name, {"calls": 0})["calls"] / n

    lines = ["", "### Syscalls per file (highlights)", "",
             "| syscall | A (sender) | B (receiver) |", "|---|---:|---:|"]
    for name in STRACE_HIGHLIGHTS:
        lines.append(f"| {name} | {per_file('A', name):.2f} | {per_file('B', name):.2f} |")
    for side, role in SIDES:
        total = sum(c["calls"] for c in counts[side].values())
        lines += ["", f"### {side} ({role}): {total:,} syscalls, {total / n:.1f} per file", "",
                  "| syscall | calls | per file | errors |", "|---|---:|---:|---:|"]
        for name, c in counts[side].items():
            lines.append(f"| {name} | {c['calls']:,} | {c['calls'] / n:.2f} | {c['errors']:,} |")
    return lines


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000,
                        help="files in the synced tree (default 10,000)")
    parser.add_argument("--shape", choices=("initial", "live"), default="initial",
                        help="initial: A has scanned the tree, B adds the source with an empty "
                             "folder; live: both share the source, then the tree is moved into "
                             "A's folder in one rename, so A's scan is in the window (the shared "
                             "bench's W1) (default initial)")
    parser.add_argument("--sizes", choices=tuple(SIZES), default="small",
                        help="small: 1–16 KiB per file (the shared bench's W1); tiny: 8–16 "
                             "bytes (scale.py's sync tree) (default small)")
    parser.add_argument("--mode", choices=("perf", "strace", "none"), default="perf",
                        help="perf: CPU samples in buckets; strace: syscall counts; none: only "
                             "wall and CPU times (default perf)")
    parser.add_argument("--bin-dir", type=Path, default=scale.default_bin_dir(),
                        help="folder with tandemd and tandemctl (default: target/release if "
                             "built, else target/debug)")
    parser.add_argument("--workdir", type=Path, default=Path("/dev/shm"),
                        help="where the trees and homes go (default /dev/shm, a tmpfs; "
                             "/var/tmp gives the disk case)")
    parser.add_argument("--freq", type=int, default=4999,
                        help="perf samples per second per CPU (default 4999)")
    parser.add_argument("--call-graph", choices=("fp", "dwarf"), default="fp",
                        help="how perf walks stacks: fp (frame pointers, `-g`, cheap; callers "
                             "in Rust code are unreliable) or dwarf (exact, much larger "
                             "profiles) (default fp)")
    parser.add_argument("--perf-scope", choices=("system", "task"), default="system",
                        help="system: one `perf record -a`, samples split by agent (default); "
                             "task: one `perf record -p PID` per agent, which on a machine "
                             "without a PMU (a VM) can double the agents' CPU")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds each phase may take before the run fails (default 1800)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the file sizes and contents")
    parser.add_argument("--json", type=Path, help="also write the raw numbers to this file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp folders (trees, homes, profiles)")
    args = parser.parse_args()
    for binary in ("tandemd", "tandemctl"):
        if not os.access(args.bin_dir / binary, os.X_OK):
            parser.error(f"{args.bin_dir / binary} is missing; build it or pass --bin-dir")
    if args.files < 1:
        parser.error("--files must be at least 1")
    return args


def main():
    args = parse_args()
    # SIGTERM would otherwise end Python without running the finally that stops the agents.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.mode == "perf":
            scale.ensure_tool("perf", Perf.package)
        elif args.mode == "strace":
            scale.ensure_tool("strace", Strace.package)
    except BenchError as err:
        log(f"profile.py: --mode {args.mode}: {err}")
        return 1
    base = Path(tempfile.mkdtemp(prefix="tandem-profile-", dir=args.workdir))
    # Profiles go to memory even when the trees are on a disk, so writing them does not
    # compete with the agents' own writes and fsyncs.
    shm = Path("/dev/shm")
    data_dir = Path(tempfile.mkdtemp(prefix="tandem-profile-data-",
                                     dir=shm if shm.is_dir() else args.workdir))
    agents, profilers = [], []
    try:
        results = run(args, base, data_dir, agents, profilers)
    except BenchError as err:
        for agent in agents:
            print(f"--- tandemd {agent.name} log tail ({agent.home}):\n{agent.log_tail()}",
                  file=sys.stderr)
        for profiler in profilers:
            if profiler.process is not None:
                print(f"--- {profiler.tool} {profiler.name}:\n{profiler.err_tail()}",
                      file=sys.stderr)
        log(f"profile.py: {err}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for profiler in profilers:
            profiler.kill()
        for agent in agents:
            agent.stop()
        if args.keep:
            log(f"kept {base} and {data_dir}")
        else:
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(data_dir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

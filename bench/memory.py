"""Memory and CPU of process trees, read from /proc (Linux only, no psutil needed).

* RSS is sampled every 250 ms (`RssSampler`) because the interesting number is the peak while
  a scenario runs, and a process's RSS can fall again once its load is gone.
* PSS (`smaps_rollup`) divides shared pages among the processes sharing them; it is the only
  fair measure for the sandbox children, which are forked from a zygote and share most of
  their memory with it. RSS sums over a tree count those shared pages once per process.
* CPU seconds per component (`CpuMeter`) answer "where does the time go" across processes:
  api, worker (+ sandbox), provider, load generator, PostgreSQL, Redis and the machine total.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

PROC = Path("/proc")
PG_PORT = 5432
PG_EVERY = 8  # count PostgreSQL connections on every 8th RSS sample (every 2 s)
Group = tuple[Callable[[], list[int]], bool]  # (pids to watch, include their descendants)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
# kernels built without CONFIG_PROC_CHILDREN lack the per-thread children lists
CHILDREN_FILES = (PROC / "self" / "task" / str(os.getpid()) / "children").exists()


def _read(path: str) -> bytes:
    """One small /proc file, with plain system calls (the sampler reads hundreds a second)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        raw = _read(f"/proc/{pid}/stat").decode()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot: with the pid, identifies a process uniquely."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_running(pid: int, started: int | None) -> bool:
    """The process `pid` that started at `started` still runs (not gone, not a zombie)."""
    fields = _stat_fields(pid)
    return bool(fields) and started is not None and int(fields[19]) == started and fields[0] != "Z"


def _parents() -> dict[int, int]:
    """pid → parent pid for every process (one pass over /proc)."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parents[int(entry.name)] = int(fields[1])
    return parents


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from `/proc/<pid>/task/<tid>/children` (each thread's own):
    reads only the tree asked about, where `_parents` reads every process on the machine."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            found.extend(int(c) for c in _read(f"/proc/{pid}/task/{tid}/children").split())
        except OSError:
            continue
    return found


def _children_of(parents: dict[int, int] | None) -> Callable[[int], list[int]]:
    """How to find a process's children: from `parents` (one pass over /proc) when given,
    else from the per-thread children lists (one pass on kernels without them). Built once
    per walk, however many roots it covers."""
    if parents is None:
        if CHILDREN_FILES:
            return children
        parents = _parents()
    by_parent: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        by_parent.setdefault(ppid, []).append(pid)
    return lambda pid: by_parent.get(pid, [])


def _walk(root: int, children_of: Callable[[int], list[int]]) -> list[int]:
    found: list[int] = []
    todo = list(children_of(root))
    while todo:  # bounded: every pid is visited once (a process tree has no cycles)
        pid = todo.pop()
        found.append(pid)
        todo.extend(children_of(pid))
    return found


def descendants(root: int, parents: dict[int, int] | None = None) -> list[int]:
    """All living descendants of `root` (children, grandchildren, ...), not `root` itself."""
    return _walk(root, _children_of(parents))


def all_descendants(roots: Iterable[int]) -> list[int]:
    """Descendants of every root (e.g. a worker's sandbox zygote and its children)."""
    children_of = _children_of(None)
    return [pid for root in roots for pid in _walk(root, children_of)]


def tree(roots: Iterable[int], parents: dict[int, int] | None = None) -> list[int]:
    """`roots` (those still running) and all their descendants."""
    children_of = _children_of(parents)
    pids: list[int] = []
    for root in roots:
        if (root in parents) if parents is not None else os.path.exists(f"/proc/{root}"):
            pids.append(root)
            pids.extend(_walk(root, children_of))
    return pids


def _status_kb(pid: int, key: str, filename: str = "status") -> int:
    try:
        with open(PROC / str(pid) / filename) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_kb(pid: int) -> int:
    """Resident set of one process (VmRSS; 0 if it is gone), from the one-line `statm`."""
    try:
        return int(_read(f"/proc/{pid}/statm").split()[1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def pss_kb(pid: int) -> int:
    """Proportional set size of one process, from smaps_rollup."""
    return _status_kb(pid, "Pss:", "smaps_rollup")


def tree_rss_mb(roots: Iterable[int]) -> float:
    return sum(rss_kb(p) for p in tree(roots)) / 1024


def tree_pss_mb(roots: Iterable[int]) -> tuple[float, int]:
    """Sum of PSS over `roots` and their descendants, and how many processes that was."""
    pids = tree(roots)
    return sum(pss_kb(p) for p in pids) / 1024, len(pids)


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = PROC / str(pid) / "fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp_inodes_to_port(port: int) -> set[int]:
    """Inodes of established TCP sockets whose remote port is `port` (/proc/net/tcp{,6})."""
    want = f":{port:04X}"
    found: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(PROC / "net" / table) as fh:
                next(fh, None)
                for line in fh:
                    cols = line.split()
                    if len(cols) > 9 and cols[2].endswith(want) and cols[3] == "01":
                        found.add(int(cols[9]))
        except OSError:
            continue
    return found


def connections_to(pids: Iterable[int], remote: set[int]) -> int:
    """How many of `pids`' sockets are in `remote` (from `_tcp_inodes_to_port`)."""
    mine: set[int] = set()
    for pid in pids:
        mine |= _socket_inodes(pid)
    return len(mine & remote)


class RssSampler:
    """Samples the RSS of named process trees every `interval_s` in a daemon thread, and how
    many PostgreSQL connections each group holds (`pg_<name>`: the platform sizes its pools by
    WORKER_CONCURRENCY and PostgreSQL refuses clients beyond `max_connections`).

    `reset()` starts a new window; `peaks()` is the largest value seen since then."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self._groups: dict[str, Group] = {}
        self._pg_groups: dict[str, Callable[[], list[int]]] = {}
        self._count = 0
        self._peak: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def watch(
        self, groups: dict[str, Group], pg_groups: dict[str, Callable[[], list[int]]]
    ) -> None:
        """Replace the watched groups: name → (function returning the pids, with descendants)
        for RSS; name → pids whose PostgreSQL connections are counted."""
        with self._lock:
            self._groups = dict(groups)
            self._pg_groups = dict(pg_groups)
            self._peak = {}

    def reset(self) -> None:
        with self._lock:
            self._peak = {}

    def peaks(self) -> dict[str, float]:
        self.sample()
        with self._lock:
            return {name: round(mb, 1) for name, mb in self._peak.items()}

    def sample(self) -> dict[str, float]:
        with self._lock:
            groups, pg_groups = dict(self._groups), dict(self._pg_groups)
        if not groups:
            return {}
        # without per-thread children lists, one pass over /proc serves every group
        parents = None if CHILDREN_FILES else _parents()
        now: dict[str, float] = {}
        for name, (pids, deep) in groups.items():
            members = tree(pids(), parents) if deep else pids()
            now[name] = sum(rss_kb(p) for p in members) / 1024
        self._count += 1
        if pg_groups and self._count % PG_EVERY == 1:
            remote = _tcp_inodes_to_port(PG_PORT)  # ~8 ms of kernel time: not every sample
            for name, pid_fn in pg_groups.items():
                now[f"pg_conns_{name}"] = connections_to(pid_fn(), remote)
        with self._lock:
            for name, mb in now.items():
                self._peak[name] = max(self._peak.get(name, 0.0), mb)
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # a process vanishing mid-read must not end the sampling
                continue


# --------------------------------------------------------------------------- CPU accounting


def _cpu_s(pids: Iterable[int], parents: dict[int, int], deep: bool) -> float:
    """CPU seconds of `pids`: their own threads (utime+stime), or with `deep` their whole
    trees including children already reaped (cutime+cstime)."""
    ticks = 0
    fields_wanted = (11, 12, 13, 14) if deep else (11, 12)
    for pid in tree(pids, parents) if deep else pids:
        fields = _stat_fields(pid)
        if fields:
            ticks += sum(int(fields[i]) for i in fields_wanted)
    return ticks / CLOCK_TICKS


def _comm(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def service_roots(comm_prefix: str, parents: dict[int, int]) -> list[int]:
    """Top processes of a service we did not start (PostgreSQL's postmaster, redis-server):
    processes named `comm_prefix*` whose parent is not. Only read, never signalled."""
    named = {pid for pid in parents if _comm(pid).startswith(comm_prefix)}
    return [pid for pid in named if parents[pid] not in named]


def machine_cpu_s() -> tuple[float, float]:
    """CPU seconds all cores spent running something since boot, and seconds stolen from them
    by the hypervisor (time a virtual core was ready but its host ran something else; it shows
    in no process's CPU time) (/proc/stat)."""
    with open(PROC / "stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    steal = values[7] if len(values) > 7 else 0
    return (sum(values[:8]) - idle - steal) / CLOCK_TICKS, steal / CLOCK_TICKS


class CpuMeter:
    """CPU seconds used per component between `start()` and `stop()`."""

    def __init__(self, groups: dict[str, Group]) -> None:
        self.groups = dict(groups)
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _snapshot(self) -> dict[str, float]:
        parents = _parents()
        snap = {name: _cpu_s(pids(), parents, deep) for name, (pids, deep) in self.groups.items()}
        snap["postgres"] = _cpu_s(service_roots("postgres", parents), parents, True)
        snap["redis"] = _cpu_s(service_roots("redis-server", parents), parents, True)
        snap["machine"], snap["steal"] = machine_cpu_s()
        return snap

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = self._snapshot()

    def stop(self) -> dict[str, float]:
        """Seconds of CPU per component; `other` is machine time none of them used (noise from
        other programs on the machine); `steal` the hypervisor's, outside `machine`; `wall_s`
        for context (2 cores = 2 s of CPU per s)."""
        end = self._snapshot()
        used = {k: max(0.0, end[k] - self._start.get(k, 0.0)) for k in end}
        known = sum(v for k, v in used.items() if k not in ("machine", "steal"))
        used["other"] = max(0.0, used["machine"] - known)
        used["wall_s"] = time.monotonic() - self._t0
        return {k: round(v, 2) for k, v in used.items()}

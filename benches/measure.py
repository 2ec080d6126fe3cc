"""Measuring one child process: wall time, user and sys CPU, peak RSS, optionally inside a
memory cgroup (v1), and the helpers around it (page-cache eviction, bytes on disk, machine).

Peak RSS is the child's ``ru_maxrss`` as GNU time reports it (from wait4: the high-water
mark of the process's resident set, all threads included since they share one address space;
for a shell, the largest of the children it waited for). /proc/<pid>/status of the process
tree is also polled every 20 ms for the split of RSS into anonymous memory and mapped file
pages (the memory maps of the source), which ``ru_maxrss`` does not give.

How busy the machine was meanwhile: the CPU time /proc/stat counts for the whole machine over
the run, minus the run's own (user + sys, its children included), per second of wall time:
``other_cores``, the cores other processes kept busy on average (0 on a quiet machine).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

POLL = 0.02
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


@dataclass
class Run:
    label: str
    cmd: list[str]
    wall: float = 0.0
    user: float = 0.0
    sys: float = 0.0
    peak_rss: int = 0  # bytes, from wait4
    peak_anon: int = 0  # bytes, polled
    peak_file: int = 0  # bytes, polled (mapped file pages: the source memory maps)
    exit_code: int | None = None  # negative: killed by that signal
    stdout: str = ""
    stderr: str = ""
    bytes_written: int | None = None
    other_cores: float | None = None  # cores other processes kept busy meanwhile, on average
    cgroup: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stdout"] = d["stdout"][-2000:]
        d["stderr"] = d["stderr"][-2000:]
        return d


class MemoryCgroup:
    """A cgroup-v1 memory group with a hard limit, created for one run and removed after.
    By default it is a child of this process's own memory cgroup, so the limits of whatever
    runs this script still apply on top of it."""

    def __init__(self, name: str, limit: int, parent: Path | None = None):
        self.parent = parent or own_memory_cgroup()
        self.path = self.parent / name
        self.limit = limit

    def __enter__(self) -> "MemoryCgroup":
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
        return self

    def __exit__(self, *exc) -> None:
        for _ in range(50):  # the killed child may take a moment to leave the group
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)

    def join_self(self) -> None:
        """Called in the child between fork and exec: everything it runs is charged here."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def report(self) -> dict:
        read = lambda f: (self.path / f).read_text()  # noqa: E731
        oom = dict(line.split() for line in read("memory.oom_control").splitlines())
        stat = dict(line.split() for line in read("memory.stat").splitlines())
        return {
            "path": str(self.path),
            "limit_in_bytes": int(read("memory.limit_in_bytes")),
            "max_usage_in_bytes": int(read("memory.max_usage_in_bytes")),
            "failcnt": int(read("memory.failcnt")),
            "oom_kill": int(oom.get("oom_kill", 0)),
            "under_oom": int(oom.get("under_oom", 0)),
            # What is still charged after the run: page cache the kernel could reclaim.
            "cache_after": int(stat.get("cache", 0)),
            "rss_after": int(stat.get("rss", 0)),
        }


def own_memory_cgroup() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return CGROUP_ROOT / path.lstrip("/")
    raise RuntimeError("no cgroup-v1 memory controller for this process")


def cgroup_v1_available() -> str | None:
    """None if a memory cgroup can be created here, else why not."""
    if not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
        return f"{CGROUP_ROOT} is not a cgroup-v1 memory hierarchy"
    try:
        parent = own_memory_cgroup()
    except RuntimeError as e:
        return str(e)
    if not os.access(parent, os.W_OK):
        return f"{parent} is not writable (run as root)"
    return None


def run(label: str, cmd: list[str], *, cgroup: MemoryCgroup | None = None, env: dict | None = None,
        cwd: str | None = None) -> Run:
    """Runs ``cmd`` under GNU time, which forks it from its own small process: the child's
    ru_maxrss then starts near zero. (Forked or vforked from this Python process, it would
    start at this process's own high-water mark: Linux carries the old address space's peak
    into the child's rusage at exec.)"""
    r = Run(label, [str(c) for c in cmd])
    base = Path(f"/tmp/gslice-bench-{os.getpid()}")
    out_path, err_path, time_path = (base.with_suffix(s) for s in (".out", ".err", ".time"))
    timed = [TIME, "-o", str(time_path), "-f", "%U %S %M", *r.cmd]
    busy_before = cpu_busy_seconds()
    with out_path.open("w") as out, err_path.open("w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(timed, stdout=out, stderr=err, env=env, cwd=cwd,
                                preexec_fn=cgroup.join_self if cgroup else None)
        while proc.poll() is None:
            for pid in _descendants(proc.pid):
                _poll_status(pid, r)
            time.sleep(POLL)
        r.wall = time.perf_counter() - started
    busy = cpu_busy_seconds() - busy_before
    r.stdout, r.stderr = out_path.read_text(), err_path.read_text()
    lines = time_path.read_text().splitlines()
    for p in (out_path, err_path, time_path):
        p.unlink()
    user, sys_, maxrss = lines[-1].split()
    r.user, r.sys, r.peak_rss = float(user), float(sys_), int(maxrss) * 1024
    r.other_cores = max(0.0, busy - r.user - r.sys) / r.wall if r.wall > 0 else None
    killed = [l for l in lines if l.startswith("Command terminated by signal")]
    r.exit_code = -int(killed[0].split()[-1]) if killed else proc.returncode
    if cgroup:
        r.cgroup = cgroup.report()
    return r


TIME = "/usr/bin/time"  # GNU time (Debian package `time`)


def cpu_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat: user, nice, system,
    irq, softirq, steal; not idle or iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


_STATUS = re.compile(r"^(RssAnon|RssFile|RssShmem):\s+(\d+) kB", re.M)


def _poll_status(pid: int, r: Run) -> None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return
    fields = {k: int(v) * 1024 for k, v in _STATUS.findall(text)}
    r.peak_anon = max(r.peak_anon, fields.get("RssAnon", 0) + fields.get("RssShmem", 0))
    r.peak_file = max(r.peak_file, fields.get("RssFile", 0))


def signal_name(code: int | None) -> str:
    if code is None or code >= 0:
        return str(code)
    return signal.Signals(-code).name


# -- files --------------------------------------------------------------------------------


def files_under(path: Path) -> list[Path]:
    path = Path(path)
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path``, each inode counted once (hard links shared between
    output folders are written once)."""
    seen, total = set(), 0
    for p in files_under(path):
        st = p.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def tree_bytes_of_shards(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))


def fsync_tree(path: Path) -> float:
    """fsyncs every file under ``path``; returns the seconds it took."""
    started = time.perf_counter()
    for p in files_under(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - started


def evict(*paths: Path) -> None:
    """Drops these files' pages from the page cache (after writing back any dirty ones), so
    the next run reads them from disk. Only these files: other processes' cache is untouched."""
    for path in paths:
        if not Path(path).exists():
            continue
        for p in files_under(path):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def warm(*paths: Path) -> None:
    """Reads these files once so that they are in the page cache."""
    for path in paths:
        for p in files_under(path):
            with p.open("rb", buffering=0) as f:
                while f.read(64 << 20):
                    pass


def remove(path: Path) -> None:
    if Path(path).is_dir():
        shutil.rmtree(path)
    elif Path(path).exists():
        Path(path).unlink()


# -- the machine --------------------------------------------------------------------------


def machine_info(scratch: Path) -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    fs = subprocess.run(["df", "--output=fstype", str(scratch)], capture_output=True, text=True).stdout.split()[-1]
    usage = shutil.disk_usage(scratch)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "filesystem": fs,
        "disk_free_bytes": usage.free,
        "load_average_at_start": os.getloadavg(),
        "free_page_reporting": free_page_reporting(),
        "python": platform.python_version(),
    }


def free_page_reporting() -> bool:
    """Whether this is a VM whose balloon device reports free pages to the host (virtio
    feature bit 5). There, memory that stayed free for a few seconds is handed back, and the
    next touch of each page costs a host page fault: writes into fresh page cache get slower
    by a factor that depends on what ran before, not on the program being measured."""
    for dev in Path("/sys/bus/virtio/devices").glob("*"):
        try:
            if (dev / "driver").resolve().name == "virtio_balloon":
                bits = (dev / "features").read_text().strip()
                return len(bits) > 5 and bits[5] == "1"
        except OSError:
            continue
    return False


def first_touch_cost(scratch: Path, nbytes: int = 512 << 20) -> dict:
    """Seconds of system CPU to write ``nbytes`` into a new file from fresh memory, and again
    inside a 64 MiB memory cgroup that makes the page cache recycle its pages. On bare metal
    the two are close; a large gap is the VM effect described in :func:`free_page_reporting`."""
    code = (f"import os\nb = b'x' * (8 << 20)\nfd = os.open({str(scratch / 'first-touch.tmp')!r}, "
            "os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
            f"for _ in range({nbytes >> 23}): os.write(fd, b)\nos.fsync(fd)\n")
    out = {}
    for label, limit in (("fresh", None), ("recycled", 64 << 20)):
        if limit and cgroup_v1_available():
            continue
        if limit:
            with MemoryCgroup(f"gslice-bench-{os.getpid()}-touch", limit) as cg:
                r = run(label, [sys.executable, "-c", code], cgroup=cg)
        else:
            r = run(label, [sys.executable, "-c", code])
        (scratch / "first-touch.tmp").unlink(missing_ok=True)
        out[f"sys_s_per_gb_{label}"] = r.sys / (nbytes / 1e9)
    return out

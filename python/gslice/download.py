"""What a Hub source must download for a plan, and the download itself.

Range mode (the default for a Hub source): the exact bytes the plan's operations read
(:func:`gslice.ranges.plan_ranges`), coalesced across gaps of at most ``gap`` bytes, minus what
the range cache holds already, are fetched with at most ``CONNECTIONS`` parallel range
requests into the shards' sparse files. Progress is recorded every ``RECORD_EVERY`` bytes of
a request, so a killed or failed run loses at most that much per connection, and the next run
fetches only what is missing. Shards that the Hugging Face cache holds completely are used as
they are. Full mode (``--full-download``): whole files into the HF cache, as huggingface_hub
downloads them.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from . import hub, hub_ranges, range_cache
from .engine import CheckpointInfo, TensorPlan
from .errors import DiskFullError, GsliceError, HubError, InternalError, Interrupted, SpecError
from .hub_checkpoint import check_unchanged
from .hub_ranges import ConnectionLost, LocationExpired
from .ranges import DEFAULT_GAP, RangeSet, plan_ranges
from .units import fmt_bytes

if TYPE_CHECKING:
    from .sources import Source

CONNECTIONS = 8  # parallel range requests
PIECE = 64 << 20  # a request covers at most this many bytes
RECORD_EVERY = 8 << 20  # bytes of a request between two flushes to the range cache's log
ATTEMPTS = 3  # tries of a request whose connection breaks, resuming where it broke

RANGES, FULL = "ranges", "full"


def coalesce_gap() -> int:
    """``GSLICE_RANGE_GAP`` (bytes) or the default of 1 MiB."""
    text = os.environ.get("GSLICE_RANGE_GAP", "").strip()
    if not text:
        return DEFAULT_GAP
    if not text.isascii() or not text.isdigit():
        raise SpecError(f"GSLICE_RANGE_GAP={text!r} is not a number of bytes")
    return int(text)


@dataclass(frozen=True)
class ShardDownload:
    name: str
    size: int
    where: str  # "hf-cache" (complete there), "range-cache" (sparse file), or "whole" (full mode)
    exact: int  # bytes the plan reads from this shard
    target: RangeSet  # those bytes coalesced: what the range cache must hold
    missing: RangeSet  # what is to be fetched now


@dataclass(frozen=True)
class DownloadPlan:
    source: str
    mode: str
    repo_id: str
    commit: str
    gap: int
    shards: tuple[ShardDownload, ...]

    @property
    def total(self) -> int:
        """Bytes of all the source's shards."""
        return sum(s.size for s in self.shards)

    @property
    def to_fetch(self) -> int:
        return sum(s.missing.total for s in self.shards)

    @property
    def exact(self) -> int:
        return sum(s.exact for s in self.shards)

    @property
    def planned(self) -> int:
        return sum(s.target.total for s in self.shards if s.where == "range-cache")

    @property
    def slack(self) -> int:
        """Bytes fetched only because they lie in a gap between two needed ranges."""
        return sum(s.target.total - s.exact for s in self.shards if s.where == "range-cache")

    def requests(self) -> int:
        return sum(len(s.missing.split(PIECE)) for s in self.shards)

    def line(self) -> str:
        """'download: X of Y (Z%)' and where the figure comes from."""
        head = f"download: {fmt_bytes(self.to_fetch)} of {fmt_bytes(self.total)} ({100 * self.to_fetch / max(self.total, 1):.1f}%)"
        if self.mode == FULL:
            whole = sum(s.where == "whole" for s in self.shards)
            return f"{head} from {self.source}: {whole} whole shard(s) not in the Hugging Face cache"
        return (
            f"{head} from {self.source}: the slice reads {fmt_bytes(self.exact)}, gaps of up to {self.gap:,} bytes "
            f"add {fmt_bytes(self.slack)}, {fmt_bytes(self.planned - self.to_fetch)} already cached; "
            f"{self.requests()} range requests"
        )

    def to_dict(self) -> dict:
        return {
            "line": self.line(), "source": self.source, "mode": self.mode, "repo_id": self.repo_id, "commit": self.commit,
            "gap": self.gap, "total_bytes": self.total, "bytes_to_fetch": self.to_fetch, "bytes_read_by_plan": self.exact,
            "bytes_planned": self.planned, "slack_bytes": self.slack, "requests": self.requests(),
            "shards": [
                {"name": s.name, "size": s.size, "where": s.where, "bytes_read_by_plan": s.exact,
                 "bytes_planned": s.target.total, "bytes_to_fetch": s.missing.total}
                for s in self.shards
            ],
        }

    def manifest_record(self) -> dict:
        """For the output's manifest: how the source was obtained, and which bytes it rests on."""
        record = {"mode": self.mode, "repo_id": self.repo_id, "commit": self.commit}
        if self.mode == RANGES:
            record["gap"] = self.gap
            record["shards"] = {
                s.name: {"from": s.where, "ranges": s.target.pairs() if s.where == "range-cache" else None}
                for s in self.shards
            }
        return record


def plan_download(source: "Source", ck: CheckpointInfo, tensors: Iterable[TensorPlan]) -> DownloadPlan | None:
    """What ``source`` must download for ``tensors``; None for a local folder."""
    if source.download is None:
        return None
    rc = source.remote
    gap = coalesce_gap()
    needed = plan_ranges(ck, tensors)
    shards = []
    for i, path in enumerate(ck.shards):
        exact = needed.get(i, RangeSet.empty())
        s = rc.shards[path.name]
        size = s.meta.size if s.meta else path.stat().st_size
        if s.hf_cache is not None:
            shards.append(ShardDownload(path.name, size, "hf-cache", exact.total, exact, RangeSet.empty()))
        elif source.download == FULL:
            shards.append(ShardDownload(path.name, size, "whole", exact.total, RangeSet.of([(0, size)]), RangeSet.of([(0, size)])))
        else:
            target = exact.coalesce(gap)
            _, have = s.sparse.load()
            shards.append(ShardDownload(path.name, size, "range-cache", exact.total, target, target.minus(have)))
    return DownloadPlan(source.label, source.download, rc.repo_id, rc.commit, gap, tuple(shards))


def refuse_hash_of_ranges(source: "Source") -> None:
    """``--hash-source`` needs whole shards; a sparse range-cache file is not one."""
    rc = source.remote
    if source.download == RANGES and rc is not None and any(s.sparse for s in rc.shards.values()):
        raise SpecError(
            "--hash-source hashes whole source shards, and a range download holds only the ranges a slice reads: "
            "add --full-download (the manifest records the Hub's SHA-256 of each shard either way)"
        )


@dataclass
class FetchReport:
    """What one run downloaded (data ranges; the headers came while opening the source)."""

    mode: str
    bytes: int = 0
    requests: int = 0
    seconds: float = 0.0
    headers_bytes: int = 0
    header_requests: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def fetch(source: "Source", dplan: DownloadPlan | None, progress: Callable[[int, int], None] | None = None) -> FetchReport | None:
    """Downloads what ``dplan`` lists as missing and checks that the range cache now covers
    every range the plan reads. Raises a one-line GsliceError; what was fetched stays.
    ``progress(done, total)`` follows the bytes; a progress object with a ``close()`` (a
    ByteProgress) is closed once the download succeeds, so that the next bar starts below it."""
    if dplan is None:
        return None
    rc = source.remote
    report = FetchReport(dplan.mode, headers_bytes=rc.headers_fetched, header_requests=rc.requests)
    rc.headers_fetched = rc.requests = 0  # reported once (verify fetches once per output)
    if dplan.mode == FULL:
        report.bytes = rc.downloaded
        return report
    started = time.perf_counter()
    if dplan.to_fetch:
        if hub.offline():
            raise HubError(
                f"{dplan.source}: {fmt_bytes(dplan.to_fetch)} that this slice reads are not in the range cache "
                f"{rc.folder}, and HF_HUB_OFFLINE is set: run once with network access, or unset HF_HUB_OFFLINE"
            )
        _check_space(rc.folder, dplan.to_fetch)
        with range_cache.locked(rc.folder):
            # again under the lock: another gslice run may have fetched some of it meanwhile
            todo = [(rc.shards[s.name], s.target.minus(rc.shards[s.name].sparse.load()[1]))
                    for s in dplan.shards if len(s.missing)]
            todo = [(shard, missing) for shard, missing in todo if len(missing)]
            _Fetcher(source, todo, sum(m.total for _, m in todo), report).run(progress)
    for s in dplan.shards:
        if s.where == "range-cache":
            shard = rc.shards[s.name]
            _, have = shard.sparse.load()
            if not have.covers(s.target):
                raise InternalError(f"the range cache lacks {s.target.minus(have).total} bytes of {s.name} after fetching them")
            shard.sparse.keep_mtime(shard.meta)
    report.seconds = time.perf_counter() - started
    if callable(close := getattr(progress, "close", None)):
        close()
    return report


def _check_space(folder, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if need > free:
        raise DiskFullError(
            f"the range cache {folder} has {fmt_bytes(free)} free and this slice needs {fmt_bytes(need)} more; "
            "nothing was fetched: free some space, or set GSLICE_CACHE to a folder on another disk"
        )


@dataclass
class _Counter:
    done: int = 0  # bytes written into the sparse files
    recorded: int = 0  # of those, flushed and in the fetch log
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int = 0, requests: int = 0, recorded: int = 0) -> None:
        with self.lock:
            self.done += n
            self.requests += requests
            self.recorded += recorded


class _Fetcher:
    """Range requests in parallel, each streamed into its shard's sparse file."""

    def __init__(self, source: "Source", todo, total: int, report: FetchReport):
        self.rc = source.remote
        self.total = total
        self.report = report
        self.counter = _Counter()
        self.stop = threading.Event()
        self.refresh = threading.Lock()
        self.fds: dict[str, int] = {}
        self.pieces = [(shard, b, e) for shard, missing in todo for b, e in missing.split(PIECE)]
        self.todo = todo

    def run(self, progress) -> None:
        try:
            for shard, _ in self.todo:
                self.fds[shard.name] = os.open(shard.sparse.path, os.O_WRONLY)
            with ThreadPoolExecutor(CONNECTIONS, thread_name_prefix="gslice-fetch") as pool:
                futures = [pool.submit(self._piece, *p) for p in self.pieces]
                self._wait(futures, progress)
        except OSError as e:
            raise range_cache.disk_error(e, self.rc.folder, self._kept()) from None
        finally:
            for fd in self.fds.values():
                os.close(fd)
            self.report.bytes = self.counter.done
            self.report.requests = self.counter.requests

    def _wait(self, futures, progress) -> None:
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
                if progress is not None:
                    progress(self.counter.done, self.total)
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    raise failed[0].exception()
        except BaseException as e:
            self.stop.set()  # running requests record what they have and return
            for f in pending:
                f.cancel()
            wait(pending)
            if isinstance(e, Interrupted):  # SIGINT/SIGTERM: say what the range cache keeps
                raise Interrupted(f"{e.message}{self._kept()}", e.signum, e.completed) from None
            if isinstance(e, ConnectionLost):
                raise HubError(f"{e} (after {ATTEMPTS} attempts){self._kept()}; run the same command again to resume") from None
            if isinstance(e, GsliceError):
                raise type(e)(f"{e}{self._kept()}") from None
            raise

    def _kept(self) -> str:
        kept = self.counter.recorded
        return f"; {fmt_bytes(kept)} fetched by this run are kept in the range cache" if kept else ""

    def _piece(self, shard, begin: int, end: int) -> None:
        """One request (resumed after a broken connection), recorded as it progresses."""
        fd = self.fds[shard.name]
        flushed = pos = begin

        def sink(off: int, data: bytes) -> None:
            nonlocal flushed, pos
            range_cache.pwrite_all(fd, data, off)
            pos = off + len(data)
            self.counter.add(len(data))
            if pos - flushed >= RECORD_EVERY:
                flushed = self._record(shard, fd, flushed, pos)

        attempt = expired = 0
        try:
            while pos < end and not self.stop.is_set():
                self.counter.add(requests=1)
                remote = shard.remote
                try:
                    hub_ranges.read(remote, pos, end, sink, self.stop)
                except ConnectionLost:
                    attempt += 1
                    if attempt >= ATTEMPTS:
                        raise
                    time.sleep(0.5 * attempt)
                except LocationExpired:
                    expired += 1
                    if expired >= ATTEMPTS:
                        raise
                    self._resolve_again(shard, remote)
        finally:
            if pos > flushed:
                self._record(shard, fd, flushed, pos)

    def _record(self, shard, fd: int, begin: int, end: int) -> int:
        range_cache.flush_data(fd)
        shard.sparse.record(begin, end)
        self.counter.add(recorded=end - begin)
        return end

    def _resolve_again(self, shard, expired) -> None:
        """A new signed URL for the shard, unless another request got one already."""
        with self.refresh:
            if shard.remote is expired:
                remote = hub_ranges.resolve(self.rc.repo_id, self.rc.commit, shard.name, hub.endpoint())
                check_unchanged(shard.meta, remote, self.rc.folder)
                shard.remote = remote

"""The Hugging Face Hub, in and out: download a source snapshot into the standard cache, and
upload an output folder. The network goes through huggingface_hub; this module only chooses
what to fetch and turns the Hub's exceptions into one-line messages.

Environment honoured: ``HF_TOKEN`` (by huggingface_hub, with a stored login as fallback),
``HF_HOME`` / ``HF_HUB_CACHE`` (where the cache lives), ``HF_HUB_OFFLINE`` (use the cache
only) and ``HF_ENDPOINT`` (read by huggingface_hub at import). The cache and offline settings
are read at each call rather than when huggingface_hub is imported, so a program that sets them
after importing gslice is obeyed too.

An unreachable Hub fails in seconds: before its first request of a run, gslice asks the
endpoint for any answer within :data:`PROBE_TIMEOUT` seconds. Without that, huggingface_hub
retries a refused connection with back-off for about 25 seconds, and waits for a server that
never answers without any limit.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import huggingface_hub
from huggingface_hub import utils as hf_errors  # re-exports the error classes in 0.x, 1.x and 2.x

from .errors import HubError

try:  # huggingface_hub >= 2: a cached snapshot that lacks some of the requested files
    from huggingface_hub.errors import IncompleteSnapshotError as _Incomplete
except ImportError:  # pragma: no cover - older huggingface_hub
    _Incomplete = ()

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "on", "yes", "true"}
PROBE_TIMEOUT = 5.0  # seconds


def endpoint() -> str:
    """The Hub URL huggingface_hub uses (``HF_ENDPOINT``, read when it was imported)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def unreachable() -> str | None:
    """Why the Hub cannot be reached ("connection refused", "no answer within 5 s"), or None
    when it answers at all (any HTTP status counts). Asked once per process."""
    return _probe(endpoint())


@functools.cache
def _probe(url: str) -> str | None:
    request = urllib.request.Request(url.rstrip("/") + "/api/whoami-v2", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return f"no answer within {PROBE_TIMEOUT:g} s"
        return (getattr(reason, "strerror", None) or str(reason)).lower()
    except (socket.timeout, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT:g} s"
    except (OSError, ValueError) as e:  # e.g. the connection reset before any answer
        return (getattr(e, "strerror", None) or str(e) or type(e).__name__).lower()


def _require_reachable(what: str) -> None:
    reason = unreachable()
    if reason is not None:
        raise HubError(f"cannot reach the Hugging Face Hub at {endpoint()} ({reason}): {what}")


def looks_like_repo_id(text: str) -> bool:
    """'owner/name' with the Hub's allowed characters (and no '--' or '..')."""
    return bool(_REPO_ID.match(text)) and "--" not in text and ".." not in text and not text.endswith(".git")


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cache_dir() -> Path:
    """The hub cache huggingface_hub uses by default, resolved from the environment now."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


@dataclass(frozen=True)
class Snapshot:
    repo_id: str
    revision: str
    commit: str | None
    path: Path


def download(
    repo_id: str,
    revision: str | None = None,
    *,
    allow_patterns: Sequence[str],
    ignore_patterns: Sequence[str] = (),
) -> Snapshot:
    """Fetches the files matching ``allow_patterns`` (or finds them in the cache) and returns
    the snapshot folder. huggingface_hub draws the download progress bars on stderr."""
    rev = revision or "main"
    cache = cache_dir()
    # Unreachable: the cache only, at once (huggingface_hub would retry for half a minute).
    reason = None if offline() else unreachable()
    try:
        path = huggingface_hub.snapshot_download(
            repo_id=repo_id,
            revision=rev,
            cache_dir=str(cache),
            allow_patterns=list(allow_patterns),
            ignore_patterns=list(ignore_patterns) or None,
            local_files_only=offline() or reason is not None,
        )
    except hf_errors.GatedRepoError:
        raise HubError(
            f"{repo_id} is a gated repository and your account has no access to it: accept its terms at "
            f"https://huggingface.co/{repo_id}, then log in with `hf auth login` or set HF_TOKEN"
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise HubError(f"{repo_id} has no revision {rev!r} (give a branch, a tag or a commit hash)") from None
    except hf_errors.RepositoryNotFoundError:
        raise HubError(
            f"{repo_id} is neither a local folder nor a Hub repository you can access "
            "(if it is private, log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except hf_errors.LocalEntryNotFoundError as e:
        raise HubError(_not_cached(repo_id, rev, cache, isinstance(e, _Incomplete), reason)) from None
    except hf_errors.HfHubHTTPError as e:
        raise HubError(f"the Hub refused to serve {repo_id}: {_first_line(e)}") from None
    except hf_errors.HFValidationError as e:
        raise HubError(f"{repo_id!r} is not a valid Hub repository id: {_first_line(e)}") from None
    except OSError as e:
        raise HubError(f"cannot download {repo_id} into {cache}: {e.strerror or _first_line(e)}") from None
    except Exception as e:  # the HTTP library's own network errors
        raise HubError(f"cannot download {repo_id}: {_network(e)}") from None
    folder = Path(path)
    return Snapshot(repo_id, rev, folder.name if _COMMIT.match(folder.name) else None, folder)


def _not_cached(repo_id: str, rev: str, cache: Path, incomplete: bool, reason: str | None = None) -> str:
    what = f"{repo_id} (revision {rev})"
    state = f"is only partly in the Hugging Face cache {cache}" if incomplete else f"is not in the Hugging Face cache {cache}"
    if offline():
        return f"{what} {state} and HF_HUB_OFFLINE is set: download it once with network access, or unset HF_HUB_OFFLINE"
    where = f" at {endpoint()} ({reason})" if reason else ""
    return f"cannot reach the Hugging Face Hub{where}, and {what} {state}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _network(e: BaseException) -> str:
    """An HTTP library's error, named: 'ConnectError: [Errno 111] Connection refused'."""
    return f"{type(e).__name__}: {_first_line(e)}"


# -- upload -------------------------------------------------------------------------------


def check_repo_id(repo_id: str, what: str = "--push-to-hub") -> None:
    if not looks_like_repo_id(repo_id):
        raise HubError(f"{what}: {repo_id!r} is not a Hub repository id (expected 'owner/name')")


def create_repo(repo_id: str, *, private: bool = False) -> str:
    """Creates the model repository if it does not exist (an existing one keeps its
    visibility). Called before any slicing so that a missing login fails in seconds."""
    check_repo_id(repo_id)
    _require_reachable(f"cannot create or access repository {repo_id}")
    try:
        return str(huggingface_hub.HfApi().create_repo(repo_id, private=private, exist_ok=True, repo_type="model"))
    except hf_errors.HfHubHTTPError as e:
        raise HubError(
            f"cannot create or access Hub repository {repo_id}: {_first_line(e)} "
            "(log in with `hf auth login` or set HF_TOKEN to a token with write access)"
        ) from None
    except Exception as e:  # the HTTP library's own network errors
        raise HubError(f"cannot create or access Hub repository {repo_id}: {_network(e)}") from None


def upload_folder(folder: Path, repo_id: str, *, commit_message: str) -> str:
    """Uploads every file of ``folder`` to the root of ``repo_id``; returns the commit URL."""
    _require_reachable(f"the upload of {folder} to {repo_id} did not start")
    try:
        info = huggingface_hub.HfApi().upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message
        )
    except hf_errors.HfHubHTTPError as e:
        raise HubError(f"upload of {folder} to {repo_id} failed: {_first_line(e)}") from None
    except OSError as e:
        raise HubError(f"upload of {folder} to {repo_id} failed: {e.strerror or _first_line(e)}") from None
    except Exception as e:  # the HTTP library's own network errors
        raise HubError(f"upload of {folder} to {repo_id} failed: {_network(e)}") from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")


def repo_url(repo_id: str) -> str:
    return f"https://huggingface.co/{repo_id}"

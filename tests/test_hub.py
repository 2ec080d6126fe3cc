"""The Hugging Face Hub, without a network: sources found in a cache layout the test builds,
the download request (which files, which cache, offline or not), the one-line errors, and
uploads through a recording stand-in for HfApi."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import filter_repo_objects

from gslice import gemma3n, hub
from gslice.testing import compare_to_reference

REPO = "google/gemma-3n-E4B-it"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# The files of google/gemma-3n-E4B-it, plus decoys slicing must not download.
REPO_FILES = [
    ".gitattributes", "README.md", "chat_template.jinja", "config.json", "generation_config.json",
    "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors",
    "model-00004-of-00004.safetensors", "model.safetensors.index.json", "preprocessor_config.json",
    "processor_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
    "notebook.ipynb", "original/model.safetensors", "onnx/model.onnx", "gguf/model-q4.gguf",
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def populate_cache(hf_home: Path, checkpoint: Path, repo: str = REPO, commit: str = COMMIT, ref: str = "main") -> Path:
    """Lays ``checkpoint`` out the way huggingface_hub caches a repo: blobs named by content
    hash, a snapshot folder of relative symlinks, and refs/<ref> holding the commit."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in sorted(checkpoint.iterdir()):
        digest = sha256(f)
        shutil.copyfile(f, root / "blobs" / digest)
        (snap / f.name).symlink_to(Path("..", "..", "blobs", digest))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to reach the Hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", no_network)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", no_network)
    return home


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records calls and what the folder held."""

    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        RecordingApi.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        RecordingApi.calls.append(("upload_folder", kwargs, sorted(p.name for p in folder.iterdir())))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc")


@pytest.fixture
def reachable(monkeypatch):
    """The Hub answers (the tests stand in for it): no probe goes out."""
    monkeypatch.setattr(hub, "unreachable", lambda: None)


@pytest.fixture
def api(monkeypatch, reachable):
    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    return RecordingApi


# -- download -----------------------------------------------------------------------------


def test_the_download_asks_for_the_slicing_files_only(e4b, tmp_path, monkeypatch, cli, reachable):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    snap = populate_cache(tmp_path / "hf", e4b)
    seen = []

    def fake_snapshot_download(**kwargs):
        seen.append(kwargs)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    result = cli("info", REPO, "--revision", "v1.0", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["source"] == REPO
    assert seen == [{
        "repo_id": REPO,
        "revision": "v1.0",
        "cache_dir": str(tmp_path / "hf" / "hub"),
        "allow_patterns": list(gemma3n.HUB_PATTERNS),
        "ignore_patterns": ["*/*"],
        "local_files_only": False,
    }]
    # What those patterns select from the real repo listing, by huggingface_hub's own filter:
    chosen = set(filter_repo_objects(REPO_FILES, allow_patterns=seen[0]["allow_patterns"], ignore_patterns=seen[0]["ignore_patterns"]))
    assert chosen == set(REPO_FILES) - {".gitattributes", "README.md", "notebook.ipynb", "original/model.safetensors",
                                        "onnx/model.onnx", "gguf/model-q4.gguf"}


def test_offline_slice_from_the_cache(e4b, hf_home, tmp_path, cli):
    snap = populate_cache(hf_home, e4b)
    out = tmp_path / "out"
    result = cli("slice", REPO, "-o", out, "--layers-to-skip", "20-24", "--ffn-dims", "32", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["source"] == REPO
    assert compare_to_reference(e4b, out, layers_to_skip=range(20, 25), widths=[32] * 30) == []
    manifest = json.loads((out / "gslice-manifest.json").read_text())
    src = manifest["source"]
    assert (src["repo_id"], src["revision"], src["commit"], src["path"]) == (REPO, "main", COMMIT, str(snap))
    shards = sorted(e4b.glob("*.safetensors"))
    assert [s["name"] for s in src["shards"]] == [p.name for p in shards]
    for rec, p in zip(src["shards"], shards):
        assert (rec["sha256"], rec["sha256_from"], rec["size"]) == (sha256(p), "hub", p.stat().st_size)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\nlicense: gemma\nbase_model: google/gemma-3n-E4B-it\n"
                           "tags:\n- matformer\n- gemma3n\n- gslice\n---\n")


def test_offline_by_commit_hash(e4b, hf_home, tmp_path, cli):
    populate_cache(hf_home, e4b)
    result = cli("info", REPO, "--revision", COMMIT, "--json")
    assert result.code == 0, result.err


def test_offline_with_nothing_cached(hf_home, tmp_path, cli):
    result = cli("slice", REPO, "-o", tmp_path / "out", "--ffn-dims", "32")
    assert result.code == 2
    assert result.err == (
        f"error: {REPO} (revision main) is not in the Hugging Face cache {hf_home / 'hub'} and HF_HUB_OFFLINE is set: "
        "download it once with network access, or unset HF_HUB_OFFLINE\n"
    )
    assert not (tmp_path / "out").exists()


def test_offline_with_another_revision_cached(e4b, hf_home, tmp_path, cli):
    populate_cache(hf_home, e4b)
    result = cli("info", REPO, "--revision", "v2")
    assert result.code == 2
    assert result.err.startswith(f"error: {REPO} (revision v2) is not in the Hugging Face cache ")


def _http_error(cls, status: int):
    response = SimpleNamespace(status_code=status, headers={}, request=None)
    return cls(f"{status} Client Error", response=response)


@pytest.mark.parametrize(
    "error, message",
    [
        (_http_error(hf_errors.GatedRepoError, 403),
         f"error: {REPO} is a gated repository and your account has no access to it: accept its terms at "
         f"https://huggingface.co/{REPO}, then log in with `hf auth login` or set HF_TOKEN\n"),
        (_http_error(hf_errors.RepositoryNotFoundError, 401),
         f"error: {REPO} is neither a local folder nor a Hub repository you can access "
         "(if it is private, log in with `hf auth login` or set HF_TOKEN)\n"),
        (_http_error(hf_errors.RevisionNotFoundError, 404),
         f"error: {REPO} has no revision 'nope' (give a branch, a tag or a commit hash)\n"),
        (hf_errors.LocalEntryNotFoundError("no connection"),
         f"error: cannot reach the Hugging Face Hub, and {REPO} (revision nope) is not in the Hugging Face cache {{cache}}\n"),
    ],
    ids=["gated", "unknown-repo", "unknown-revision", "no-connection"],
)
def test_hub_errors_are_one_line(error, message, tmp_path, monkeypatch, cli, reachable):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    def failing(**kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    result = cli("slice", REPO, "--revision", "nope", "-o", tmp_path / "out", "--ffn-dims", "32")
    assert (result.code, result.err) == (2, message.replace("{cache}", str(tmp_path / "hf" / "hub")))


def test_offline_with_a_partial_snapshot(hf_home, tmp_path, monkeypatch, cli):
    def partial(**kwargs):
        assert kwargs["local_files_only"] is True
        raise hf_errors.IncompleteSnapshotError("2 file(s) are missing", snapshot_path=str(tmp_path))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", partial)
    result = cli("info", REPO)
    assert (result.code, result.err) == (
        2, f"error: {REPO} (revision main) is only partly in the Hugging Face cache {hf_home / 'hub'} and HF_HUB_OFFLINE "
           "is set: download it once with network access, or unset HF_HUB_OFFLINE\n")


def test_local_folder_wins_and_refuses_a_revision(e4b, cli, tmp_path):
    result = cli("info", e4b, "--revision", "main")
    assert (result.code, result.err) == (2, f"error: --revision main applies to Hub repositories, but {e4b} is a local folder\n")


def test_a_missing_relative_path_is_not_sent_to_the_hub(cli, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: pytest.fail("asked the Hub"))
    result = cli("info", "./no/such")
    assert (result.code, result.err) == (2, "error: source ./no/such does not exist\n")


# -- upload -------------------------------------------------------------------------------


def test_push_creates_the_repo_first_and_uploads_the_folder(e4b, hf_home, tmp_path, api, cli):
    populate_cache(hf_home, e4b)
    out = tmp_path / "out"
    result = cli("slice", REPO, "-o", out, "--layers-to-skip", "20-24", "--ffn-dims", "32",
                 "--push-to-hub", "me/tiny-e2b", "--private", "--json")
    assert result.code == 0, result.err
    (create, repo, kwargs), (upload, up_kwargs, files) = api.calls
    assert (create, repo, kwargs) == ("create_repo", "me/tiny-e2b", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert upload == "upload_folder"
    assert up_kwargs == {
        "repo_id": "me/tiny-e2b",
        "folder_path": str(out),
        "repo_type": "model",
        "commit_message": f"Upload a Gemma 3n slice of {REPO} made with gslice",
    }
    assert files == sorted(p.name for p in out.iterdir())
    assert {"gslice-manifest.json", "README.md", "config.json", "model.safetensors"} <= set(files)
    hub_report = json.loads(result.out)["hub"]
    assert hub_report == {"repo": "me/tiny-e2b", "private": True, "url": "https://huggingface.co/me/tiny-e2b/commit/abc", "uploaded": True}


def test_push_dry_run_lists_files_and_sizes_and_touches_nothing(e4b, tmp_path, api, cli):
    out = tmp_path / "out"
    result = cli("slice", e4b, "-o", out, "--layers-to-skip", "20-24", "--push-to-hub", "me/x", "--dry-run")
    assert result.code == 0, result.err
    assert api.calls == [] and not out.exists()
    lines = result.out.splitlines()
    start = lines.index(f"dry run: would write {out} and upload it to https://huggingface.co/me/x:")
    listed = {line.split()[0]: " ".join(line.split()[1:]) for line in lines[start + 1:-1]}
    # The real run writes exactly those files, with those sizes.
    assert cli("slice", e4b, "-o", out, "--layers-to-skip", "20-24").code == 0
    from gslice.units import fmt_bytes

    assert listed == {p.name: fmt_bytes(p.stat().st_size) for p in out.iterdir()}
    assert lines[-1] == f"  {len(listed)} files, {fmt_bytes(sum(p.stat().st_size for p in out.iterdir()))}"


def test_push_refuses_a_bad_repo_id_before_slicing(e4b, tmp_path, api, cli):
    result = cli("slice", e4b, "-o", tmp_path / "out", "--push-to-hub", "not a repo")
    assert (result.code, result.err) == (2, "error: --push-to-hub: 'not a repo' is not a Hub repository id (expected 'owner/name')\n")
    assert api.calls == [] and not (tmp_path / "out").exists()


def test_push_command_checks_the_folder_first(e4b, tmp_path, api, cli):
    out = tmp_path / "out"
    assert cli("slice", e4b, "-o", out, "--ffn-dims", "32").code == 0
    result = cli("push", out, "me/x", "--dry-run")
    assert result.code == 0 and api.calls == []
    assert result.out.splitlines()[0] == f"dry run: would upload {out} to https://huggingface.co/me/x:"
    size = (out / "config.json").stat().st_size
    (out / "config.json").write_text("{}")
    result = cli("push", out, "me/x")
    assert (result.code, result.err) == (
        2, f"error: refusing to upload {out}: config.json: 2 bytes, the manifest says {size} (1 problem(s); run gslice verify)\n")
    assert api.calls == []


def test_create_repo_failure_is_one_line(e4b, tmp_path, monkeypatch, cli, reachable):
    class Refusing:
        def create_repo(self, repo_id, **kwargs):
            raise _http_error(hf_errors.HfHubHTTPError, 401)

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    result = cli("slice", e4b, "-o", tmp_path / "out", "--push-to-hub", "me/x")
    assert (result.code, result.err) == (
        2, "error: cannot create or access Hub repository me/x: 401 Client Error "
           "(log in with `hf auth login` or set HF_TOKEN to a token with write access)\n")
    assert not (tmp_path / "out").exists()

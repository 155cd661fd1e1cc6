"""Sharing adapters: local folders, an offline Hub cache, and push/pull against a local Hub server.

No test reaches the internet: uploads and downloads go to a threaded HTTP server on 127.0.0.1
that speaks the endpoints huggingface_hub's create_repo / create_commit / hf_hub_download use
(POST /api/repos/create, /api/validate-yaml, /api/models/{repo}/preupload/{rev},
/api/models/{repo}/commit/{rev} with an NDJSON body, HEAD/GET /{repo}/resolve/{rev}/{file}).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

pytest.importorskip("huggingface_hub")

import spt_adapter  # noqa: E402
from spt_adapter.errors import AdapterFileError, FingerprintMismatchError, SPTError  # noqa: E402
from spt_adapter.files.hub import ADAPTER_FILENAME  # noqa: E402

SERVER_LIFETIME_S = 90  # the server stops itself after this, whatever happens to the test


# ---------------------------------------------------------------------------------------------
# real small backbones (spandrel) and adapters with non-zero units
# ---------------------------------------------------------------------------------------------
from _archs import tiny_esrgan as esrgan  # noqa: E402
from _archs import tiny_swinir as swinir
from _helpers import randomise


def _randomise_units(model, seed: int = 1) -> None:
    randomise((p for _, p in model.unit_parameters()), seed)


def make_adapter(kind: str = "esrgan"):
    if kind == "esrgan":
        model = spt_adapter.inject(
            esrgan(),
            targets="model.1.sub.[01]",
            example_input=torch.zeros(1, 3, 16, 16),
            config=spt_adapter.SPTConfig(hidden=4, prior={"provider": "classical", "encoding": "label"}),
        )
    else:
        model = spt_adapter.inject(
            swinir(),
            targets="layers.*.residual_group",
            example_input=torch.zeros(1, 3, 16, 16),
            config=spt_adapter.SPTConfig(hidden=4, fusion="concat"),
        )
    _randomise_units(model)
    return model


def inputs():
    g = torch.Generator().manual_seed(7)
    lq = torch.rand(1, 3, 16, 16, generator=g)
    prior = torch.randint(1, 5, (1, 1, 16, 16), generator=g).float() / 4
    return lq, prior


def output(model):
    lq, prior = inputs()
    with torch.no_grad():
        return model(lq, prior=prior)


@pytest.fixture(scope="module")
def reference():
    model = make_adapter()
    return model, output(model)


# ---------------------------------------------------------------------------------------------
# a local Hub server
# ---------------------------------------------------------------------------------------------
class FakeHubState:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "commits": [(sha, {path: bytes})]}
        self.requests: list[tuple[str, str]] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()

    def files(self, repo_id: str, revision: str = "main") -> tuple[str, dict[str, bytes]]:
        commits = self.repos[repo_id]["commits"]
        if revision == "main":
            return commits[-1]
        for sha, files in commits:
            if sha == revision:
                return sha, files
        raise KeyError(revision)


def _handler(state: FakeHubState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and not head:
                self.wfile.write(body)

        def _json(self, code: int, obj, headers: dict | None = None):
            head = self.command == "HEAD"  # a HEAD answer has headers only
            self._send(
                code, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}, head=head
            )

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _record(self):
            with state.lock:
                state.requests.append((self.command, urlsplit(self.path).path))
                state.auth.append(self.headers.get("Authorization"))

        def do_POST(self):
            self._record()
            path = unquote(urlsplit(self.path).path)
            body = self._body()
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo_id = (
                    f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
                )
                host = f"http://{self.headers['Host']}"
                with state.lock:
                    if repo_id in state.repos:  # the Hub answers 409 with the repo's url
                        return self._json(
                            409, {"error": "You already created this model repo", "url": f"{host}/{repo_id}"}
                        )
                    state.repos[repo_id] = {
                        "private": payload.get("visibility") == "private" or bool(payload.get("private")),
                        "commits": [],
                    }
                return self._json(200, {"url": f"{host}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                return self._json(200, {"errors": [], "warnings": []})
            parts = path.split("/")  # ['', 'api', 'models', ns, name, op, rev]
            if len(parts) == 7 and parts[1] == "api" and parts[2] == "models" and parts[5] in ("preupload", "commit"):
                repo_id = f"{parts[3]}/{parts[4]}"
                if repo_id not in state.repos:
                    return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                if parts[5] == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(
                        200,
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                    )
                assert self.headers.get("Content-Type") == "application/x-ndjson"
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                assert lines[0]["key"] == "header" and lines[0]["value"]["summary"]
                with state.lock:
                    previous = dict(state.repos[repo_id]["commits"][-1][1]) if state.repos[repo_id]["commits"] else {}
                    for item in lines[1:]:
                        assert item["key"] == "file" and item["value"]["encoding"] == "base64", item["key"]
                        previous[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    sha = hashlib.sha1(
                        json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in previous.items())).encode()
                        + str(len(state.repos[repo_id]["commits"])).encode()
                    ).hexdigest()
                    state.repos[repo_id]["commits"].append((sha, previous))
                host = f"http://{self.headers['Host']}"
                return self._json(
                    200, {"commitUrl": f"{host}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True}
                )
            return self._json(404, {"error": f"unknown endpoint {path}"})

        def _resolve(self, head: bool):
            self._record()
            path = unquote(urlsplit(self.path).path)
            parts = path.split("/")  # ['', ns, name, 'resolve', rev, *file]
            if len(parts) < 6 or parts[3] != "resolve":
                return self._json(404, {"error": "not found"})
            repo_id, revision, filename = f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:])
            if repo_id not in state.repos or not state.repos[repo_id]["commits"]:
                return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            try:
                sha, files = state.files(repo_id, revision)
            except KeyError:
                return self._json(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
            if filename not in files:
                return self._json(
                    404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}
                )
            data = files[filename]
            etag = hashlib.sha256(data).hexdigest()
            self._send(
                200,
                data,
                {
                    "X-Repo-Commit": sha,
                    "ETag": f'"{etag}"',
                    "Content-Length": str(len(data)),
                    "Content-Type": "application/octet-stream",
                },
                head=head,
            )

        def do_HEAD(self):
            self._resolve(head=True)

        def do_GET(self):
            self._resolve(head=False)

    return Handler


@pytest.fixture
def hub_server(monkeypatch):
    state = FakeHubState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(SERVER_LIFETIME_S, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads these once, at import; its own background calls (e.g. the agent-harness
    # registry) use them, so point them at the local server too: nothing may reach the internet
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    state.url = url
    try:
        yield state
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# local folders
# ---------------------------------------------------------------------------------------------
def test_save_pretrained_writes_only_the_delta_and_a_card(tmp_path, reference):
    model, expected = reference
    folder = model.save_pretrained(tmp_path / "out", training={"data": "DF2K", "task": "sr:2", "steps": 10})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", ADAPTER_FILENAME]
    meta, entries = spt_adapter.read_adapter_header(folder / ADAPTER_FILENAME)
    unit_numel = sum(p.numel() for _, p in model.unit_parameters())
    assert set(entries) == {k for k, _ in model.unit_parameters()}
    assert (folder / ADAPTER_FILENAME).stat().st_size < unit_numel * 4 + 16_000  # no backbone inside
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: spt-adapter\n")
    for fact in (
        "RRDBNet",
        "model.1.sub.0",
        "model.1.sub.1",
        f"{unit_numel:,} parameters",
        "prior provider: `classical`",
        "prior encoding: `label`",
        "data: DF2K",
        "task: sr:2",
        "spt_adapter.from_pretrained",
        "sha256",
    ):
        assert fact in card, fact
    assert json.loads(meta["training"]) == {"data": "DF2K", "steps": 10, "task": "sr:2"}

    loaded = spt_adapter.from_pretrained(esrgan(), folder)
    assert torch.equal(output(loaded), expected)
    loaded_file = spt_adapter.from_pretrained(esrgan(), folder / ADAPTER_FILENAME)
    assert torch.equal(output(loaded_file), expected)


def test_save_pretrained_token_layout_swinir(tmp_path):
    model = make_adapter("swinir")
    expected = output(model)
    model.save_pretrained(tmp_path)
    loaded = spt_adapter.from_pretrained(swinir(), str(tmp_path))
    assert torch.equal(output(loaded), expected)
    lq, _ = inputs()
    with loaded.disable_adapter(), torch.no_grad():
        assert torch.equal(loaded(lq), swinir()(lq))


def test_from_pretrained_errors_are_clear(tmp_path, reference):
    model, _ = reference
    with pytest.raises(AdapterFileError, match="does not exist"):
        spt_adapter.from_pretrained(esrgan(), tmp_path / "missing" / "dir")
    (tmp_path / "peftlike").mkdir()
    (tmp_path / "peftlike" / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterFileError, match="PEFT adapter folder"):
        spt_adapter.from_pretrained(esrgan(), tmp_path / "peftlike")
    with pytest.raises(AdapterFileError, match="does not exist"):  # no '/': never a Hub id (files.hub.looks_local)
        spt_adapter.from_pretrained(esrgan(), "bad repo id!")
    model.save_pretrained(tmp_path / "ok")
    other = esrgan(seed=3)  # same shapes, other weights
    with pytest.raises(FingerprintMismatchError, match="sha256"):
        spt_adapter.from_pretrained(other, tmp_path / "ok")
    assert not any(".spt_units." in n for n, _ in other.named_parameters())
    bigger = __import__("spandrel.architectures.ESRGAN", fromlist=["ESRGAN"]).ESRGAN(
        in_nc=3, out_nc=3, num_filters=16, num_blocks=2, scale=2
    )
    with pytest.raises(FingerprintMismatchError, match="model.1.sub.0"):
        spt_adapter.from_pretrained(bigger, tmp_path / "ok")


def test_save_pretrained_is_atomic_on_failure(tmp_path, reference, monkeypatch):
    model, _ = reference
    folder = model.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    import spt_adapter.files.hub as hub

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(hub, "write_model_card", boom)
    _randomise_units(model, seed=99)
    try:
        with pytest.raises(OSError, match="disk full"):
            model.save_pretrained(tmp_path)
    finally:
        _randomise_units(model, seed=1)
    # the card was never half-written and no temporary file is left behind
    assert (folder / "README.md").read_bytes() == before["README.md"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", ADAPTER_FILENAME]


# ---------------------------------------------------------------------------------------------
# a pre-populated Hub cache, offline
# ---------------------------------------------------------------------------------------------
def _populate_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str, ref: str = "main") -> None:
    """Lay files out the way huggingface_hub stores its cache: blobs/, refs/<ref>, snapshots/<commit>/."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / name)


def test_offline_cache_round_trip(tmp_path, reference, monkeypatch):
    model, expected = reference
    folder = model.save_pretrained(tmp_path / "saved")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    cache = tmp_path / "hub_cache"
    commit = "a" * 40
    _populate_cache(cache, "lab/esrgan-spt", files, commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: any request would fail
    loaded = spt_adapter.from_pretrained(esrgan(), "lab/esrgan-spt", cache_dir=cache)
    assert torch.equal(output(loaded), expected)
    loaded_rev = spt_adapter.from_pretrained(esrgan(), "lab/esrgan-spt", revision=commit, cache_dir=cache)
    assert torch.equal(output(loaded_rev), expected)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # the cache location from the environment
    assert torch.equal(output(spt_adapter.from_pretrained(esrgan(), "lab/esrgan-spt")), expected)
    with pytest.raises(AdapterFileError, match="not in the Hub cache.*offline mode is on"):
        spt_adapter.from_pretrained(esrgan(), "lab/other-adapter", cache_dir=cache)


def test_offline_env_set_before_start_in_a_fresh_process(tmp_path, reference):
    """HF_HUB_OFFLINE=1 as users set it: before Python starts; huggingface_hub refuses any HTTP."""
    model, expected = reference
    folder = model.save_pretrained(tmp_path / "saved")
    cache = tmp_path / "hub_cache"
    _populate_cache(cache, "lab/esrgan-spt", {p.name: p.read_bytes() for p in folder.iterdir()}, "b" * 40)
    torch.save({"expected": expected}, tmp_path / "expected.pt")
    script = f"""
import torch, spt_adapter, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_hub import esrgan, output
m = spt_adapter.from_pretrained(esrgan(), "lab/esrgan-spt")
assert torch.equal(output(m), torch.load({str(tmp_path / "expected.pt")!r})["expected"])
try:
    spt_adapter.from_pretrained(esrgan(), "lab/not-cached")
except spt_adapter.AdapterFileError as e:
    print("REFUSED:", e)
print("OK")
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "REFUSED:" in res.stdout and "offline mode is on" in res.stdout and res.stdout.strip().endswith("OK")


# ---------------------------------------------------------------------------------------------
# push and pull through a local Hub server
# ---------------------------------------------------------------------------------------------
def test_push_then_pull_through_local_hub(tmp_path, reference, hub_server):
    model, expected = reference
    info = model.push_to_hub(
        "lab/esrgan-spt", private=True, token="hf_test_token", training={"data": "DIV2K", "task": "sr:2"}
    )
    repo = hub_server.repos["lab/esrgan-spt"]
    assert repo["private"] is True
    assert len(repo["commits"]) == 1  # one commit with both files
    sha, files = repo["commits"][0]
    assert info.oid == sha
    assert sorted(files) == ["README.md", ADAPTER_FILENAME]
    assert "lab/esrgan-spt" in files["README.md"].decode() and "data: DIV2K" in files["README.md"].decode()
    pushed = [
        a
        for (m, p), a in zip(hub_server.requests, hub_server.auth, strict=True)
        if p.startswith(("/api/repos", "/api/models"))
    ]
    assert len(pushed) >= 3 and all(a == "Bearer hf_test_token" for a in pushed)
    ops = [(m, p) for m, p in hub_server.requests]
    assert ("POST", "/api/repos/create") in ops and ("POST", "/api/models/lab/esrgan-spt/commit/main") in ops

    cache = tmp_path / "cache"
    loaded = spt_adapter.from_pretrained(esrgan(), "lab/esrgan-spt", cache_dir=cache)
    assert torch.equal(output(loaded), expected)
    # the download went into huggingface_hub's cache layout
    snapshot = cache / "models--lab--esrgan-spt" / "snapshots" / sha / ADAPTER_FILENAME
    assert snapshot.is_file() and snapshot.read_bytes() == files[ADAPTER_FILENAME]
    assert (cache / "models--lab--esrgan-spt" / "refs" / "main").read_text() == sha

    # a second push (other weights) is a second commit; old revisions stay loadable by commit id
    second = make_adapter()
    _randomise_units(second, seed=5)
    info2 = second.push_to_hub("lab/esrgan-spt")
    assert len(repo["commits"]) == 2 and info2.oid != sha
    latest = spt_adapter.from_pretrained(esrgan(), "lab/esrgan-spt", cache_dir=cache)
    assert torch.equal(output(latest), output(second))
    pinned = spt_adapter.from_pretrained(esrgan(), "lab/esrgan-spt", revision=sha, cache_dir=cache)
    assert torch.equal(output(pinned), expected)


def test_pull_errors_from_local_hub(tmp_path, reference, hub_server):
    model, _ = reference
    with pytest.raises(AdapterFileError, match="does not exist or is private"):
        spt_adapter.from_pretrained(esrgan(), "lab/nothing-here", cache_dir=tmp_path)
    model.push_to_hub("lab/esrgan-spt")
    with pytest.raises(AdapterFileError, match="has no file other.safetensors"):
        spt_adapter.from_pretrained(esrgan(), "lab/esrgan-spt", filename="other.safetensors", cache_dir=tmp_path)
    with pytest.raises(AdapterFileError, match="no revision 'v9'"):
        spt_adapter.from_pretrained(esrgan(), "lab/esrgan-spt", revision="v9", cache_dir=tmp_path)


def test_push_refused_offline(reference, monkeypatch):
    model, _ = reference
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SPTError, match="offline mode"):
        model.push_to_hub("lab/esrgan-spt")


def test_core_import_does_not_load_huggingface_hub():
    code = "import sys, spt_adapter; assert 'huggingface_hub' not in sys.modules; assert 'peft' not in sys.modules"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]

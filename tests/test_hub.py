"""Loading SiTPipeline from the Hub: online (a local server speaking the Hub API via HF_ENDPOINT) and
offline (HF_HUB_OFFLINE=1 with a Hub cache laid out by the test), plus clear errors. Each run loads the repo
twice, with ``SiTPipeline.from_pretrained`` (the package's classes) and with stock
``DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`` (the repo's code files), and both must
give the same images bit for bit. Loading without the package installed: tests/test_stock_loading.py.

huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE at import time, so the loads run in a fresh Python.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
from conftest import tiny_sit

from sit_diffusers.hub import PipelineNotFoundError, resolve_pretrained_folder
from sit_diffusers.pipeline_sit import SiTPipeline
from sit_diffusers.scheduling_sit import SiTSampler

ID2LABEL = {0: "cat, kitty", 1: "dog", 2: "fish"}


# ----------------------------------------------------------------------------- a minimal Hub
class FakeHub:
    """Serves ``{repo_id: {path: bytes}}`` through the endpoints ``snapshot_download`` uses:

    ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (commit sha and file list: what
    ``model_info`` asks, as ``DiffusionPipeline.download`` does), ``GET /api/models/{repo}/tree/{sha}`` (file
    list), ``HEAD|GET /{repo}/resolve/{sha}/{path}`` (metadata headers, bytes). Unknown repos answer 404
    with ``X-Error-Code: RepoNotFound``, as the Hub does.
    """

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.sha = {r: hashlib.sha1(repr(sorted(files)).encode()).hexdigest() for r, files in repos.items()}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.route(body=False)

            def do_GET(self) -> None:
                self.route(body=True)

            def reply(self, code: int, data: bytes, headers: dict[str, str], body: bool) -> None:
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def route(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                routes = (
                    (r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", "revision"),
                    (r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", "tree"),
                    (r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", "resolve"),
                )
                hits = [(kind, m) for pattern, kind in routes if (m := re.fullmatch(pattern, path))]
                if not hits:
                    return self.reply(404, b"{}", {}, body)
                kind, m = hits[0]
                repo = m[1]
                if repo not in hub.repos:
                    error = {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}
                    return self.reply(404, b'{"error": "Repository not found"}', error, body)
                files, sha = hub.repos[repo], hub.sha[repo]
                json_type = {"Content-Type": "application/json"}
                if kind == "revision":
                    doc = {
                        "id": repo,
                        "sha": sha,
                        "private": False,
                        "siblings": [{"rfilename": p} for p in files],
                    }
                    return self.reply(200, json.dumps(doc).encode(), json_type, body)
                if kind == "tree":
                    doc = [
                        {"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                        for p, d in files.items()
                    ]
                    return self.reply(200, json.dumps(doc).encode(), json_type, body)
                data = files.get(m[3])
                if data is None:
                    return self.reply(404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)
                etag = '"' + hashlib.sha1(data).hexdigest() + '"'
                return self.reply(200, data, {"X-Repo-Commit": sha, "ETag": etag}, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A tiny pixel-space pipeline saved to disk, its fixed input noise and its reference output."""
    model = tiny_sit(0.3, sample_size=4, num_classes=3)
    pipe = SiTPipeline(model.eval(), SiTSampler.from_preset("ode-heun"), id2label=ID2LABEL)
    pipe.register_to_config(default_num_inference_steps=2)
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("saved") / "pipe"
    pipe.save_pretrained(folder)
    (folder / "not_needed.bin").write_bytes(b"\0" * 64)  # filtered out by the download patterns
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.save(x0, folder.parent / "x0.pt")
    ref = pipe(["kitty", 2], guidance_scale=2.0, latents=x0, output_type="pt").images  # (2, 3, 4, 4)
    return folder, x0, ref


def repo_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


LOAD_SCRIPT = r"""
import json, sys, torch
from diffusers import DiffusionPipeline
from sit_diffusers.hub import PipelineNotFoundError
from sit_diffusers.pipeline_sit import SiTPipeline
repo, x0_path, out_path = sys.argv[1:4]
pipe = SiTPipeline.from_pretrained(repo)
stock = DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)
runs = {}
for p in (pipe, stock):
    p.set_progress_bar_config(disable=True)
    runs[p] = p(["kitty", 2], guidance_scale=2.0, latents=torch.load(x0_path), output_type="pt").images
torch.save({"images": runs[pipe], "id2label": pipe.id2label, "folder": str(pipe.config._name_or_path),
            "classes": [type(c).__module__ for c in (pipe, pipe.transformer, stock, stock.transformer)],
            "stock_images": runs[stock], "stock_id2label": stock.id2label}, out_path)
errors = {}
for ref, kw in (("org/missing", {}), ("org/never-cached", {"local_files_only": True})):
    try:
        SiTPipeline.from_pretrained(ref, **kw)
    except PipelineNotFoundError as err:
        errors[ref] = str(err)
print(json.dumps(errors))
"""


def start_python(script: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full_env.update(env, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def hub_runs(saved_pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the online and the offline load side by side (each a fresh Python) and collect the results."""
    folder = saved_pipeline[0]
    x0 = str(folder.parent / "x0.pt")
    root = tmp_path_factory.mktemp("hub")
    hub = FakeHub({"org/tiny-sit": repo_files(folder)})

    # offline: a Hub cache laid out by hand (refs/main -> commit, snapshots/<commit>/files)
    offline_cache = root / "offline-cache"
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = offline_cache / "models--org--offline-sit"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(sha)
    shutil.copytree(folder, repo_dir / "snapshots" / sha)

    runs = {
        "online": (
            ["org/tiny-sit", x0, str(root / "online.pt")],
            {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(root / "online-cache"),
             "HF_MODULES_CACHE": str(root / "online-modules")},
        ),
        # a dead endpoint: any network access would fail loudly
        "offline": (
            ["org/offline-sit", x0, str(root / "offline.pt")],
            {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(offline_cache), "HF_ENDPOINT": "http://127.0.0.1:9",
             "HF_MODULES_CACHE": str(root / "offline-modules")},
        ),
    }
    procs = {name: start_python(LOAD_SCRIPT, args, env) for name, (args, env) in runs.items()}
    results = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"{name} load failed:\n{stderr[-3000:]}"
            results[name] = {
                **torch.load(runs[name][0][2]),
                "errors": json.loads(stdout.strip().splitlines()[-1]),
            }
    finally:
        hub.close()
    results["hub"] = hub
    results["online_cache"] = root / "online-cache"
    return results


# ----------------------------------------------------------------------------- tests
def check_both_loaders(result: dict, ref: torch.Tensor) -> None:
    """The package's pipeline and the stock-loaded one (the repo's code) give the reference images exactly."""
    torch.testing.assert_close(result["images"], ref, rtol=0, atol=0)
    torch.testing.assert_close(result["stock_images"], ref, rtol=0, atol=0)
    assert result["id2label"] == result["stock_id2label"] == ID2LABEL
    package, package_model, stock, stock_model = result["classes"]
    assert package == "sit_diffusers.pipeline_sit" and package_model == "sit_diffusers.modeling_sit"
    assert stock.startswith("diffusers_modules.") and stock_model.startswith("diffusers_modules.")


def test_online_download_then_local_load(saved_pipeline, hub_runs: dict) -> None:
    ref = saved_pipeline[2]
    result, hub = hub_runs["online"], hub_runs["hub"]
    check_both_loaders(result, ref)
    sha = hub.sha["org/tiny-sit"]
    snapshot = hub_runs["online_cache"] / "models--org--tiny-sit" / "snapshots" / sha
    assert Path(result["folder"]) == snapshot  # loaded from the downloaded snapshot
    # the online code path really ran: revision lookup, tree listing, and file downloads
    paths = [p for _, p in hub.requests]
    assert "/api/models/org/tiny-sit/revision/main" in paths
    assert any(p.startswith("/api/models/org/tiny-sit/tree/") for p in paths)
    downloaded = {
        p.split(f"/resolve/{sha}/", 1)[1] for m, p in hub.requests if m == "GET" and "/resolve/" in p
    }
    assert {"model_index.json", "transformer/config.json", "scheduler/scheduler_config.json", "pipeline.py",
            "transformer/sit_transformer.py", "modeling_sit.py"} <= downloaded
    assert "not_needed.bin" not in downloaded and not (snapshot / "not_needed.bin").exists()
    assert "'org/missing' was not found" in result["errors"]["org/missing"]
    assert "not in the local Hub cache" in result["errors"]["org/never-cached"]


def test_offline_from_a_cache_laid_out_by_hand(saved_pipeline, hub_runs: dict) -> None:
    result = hub_runs["offline"]
    check_both_loaders(result, saved_pipeline[2])
    assert "not in the local Hub cache" in result["errors"]["org/missing"]  # a clear error, no traceback
    assert not any(p.startswith("/org/offline") for _, p in hub_runs["hub"].requests)


def test_local_references_give_clear_errors(saved_pipeline, tmp_path: Path) -> None:
    folder = saved_pipeline[0]
    assert resolve_pretrained_folder(folder) == folder
    with pytest.raises(PipelineNotFoundError, match="not an existing folder"):
        resolve_pretrained_folder(tmp_path / "does-not-exist")
    with pytest.raises(PipelineNotFoundError, match="not an existing folder"):
        resolve_pretrained_folder("./also/not/here")
    with pytest.raises(PipelineNotFoundError, match="no model_index.json"):
        resolve_pretrained_folder(tmp_path)
    with pytest.raises(PipelineNotFoundError, match="valid Hub repo id"):
        resolve_pretrained_folder("bad repo id!")

"""Hub push against a loopback HTTP server speaking the endpoints huggingface_hub uses."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pruning_hf import prune
from pruning_hf.cli import main
from pruning_hf.hf.hub import HubPushError, push_folder
from pruning_hf.hf.loading import load_model

TOKEN = "hf_loopbackSECRETtoken0123456789"


class FakeHub:
    """Records repo creations and commits; answers like the Hub (every file uploaded inline)."""

    def __init__(self) -> None:
        self.created: list[dict] = []
        self.files: dict[str, dict[str, bytes]] = {}
        self.auth: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, payload) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.auth.add(self.headers.get("Authorization", ""))
                path = self.path.split("?")[0]
                parts = path.strip("/").split("/")
                if path == "/api/repos/create":
                    request = json.loads(body)
                    hub.created.append(request)
                    repo = f"{request['organization']}/{request['name']}"
                    return self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                if parts[:2] == ["api", "models"] and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False, "oid": None} for f in files]})
                if parts[:2] == ["api", "models"] and parts[4] == "commit":
                    repo = f"{parts[2]}/{parts[3]}"
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            value = item["value"]
                            hub.files.setdefault(repo, {})[value["path"]] = base64.b64decode(value["content"])
                    return self._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{'a' * 40}",
                                             "commitOid": "a" * 40, "pullRequestUrl": None})
                return self._reply(404, {"error": f"unexpected {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def online(monkeypatch):
    """Tests run with HF_HUB_OFFLINE=1; pushing needs it off (the server is on loopback)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def pruned_folder(make_checkpoint, tokenizer, tmp_path) -> Path:
    model = load_model(make_checkpoint("opt"))
    prune(model, {"method": "magnitude", "sparsity": 0.5}, tokenizer, progress=False)
    folder = tmp_path / "opt-magnitude-50"
    model.save_pretrained(folder)
    return folder


def _all_written_bytes(*roots: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for root in roots for p in root.rglob("*") if p.is_file()]


def test_cli_push_uploads_every_file_private_and_never_writes_the_token(pruned_folder, online, monkeypatch,
                                                                      tmp_path, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert main(["push", str(pruned_folder), "alice/opt-magnitude-50", "--private"]) == 0
    assert hub.created == [{"name": "opt-magnitude-50", "organization": "alice", "visibility": "private",
                            "type": "model"}]
    arrived = hub.files["alice/opt-magnitude-50"]
    local = {p.name: p.read_bytes() for p in pruned_folder.iterdir() if p.is_file()}
    assert set(arrived) == set(local) >= {"config.json", "model.safetensors", "README.md", "pruning_report.json",
                                          "tokenizer.json"}
    assert all(arrived[name] == content for name, content in local.items())
    assert "alice/opt-magnitude-50" in arrived["README.md"].decode()  # the card names the repo it lives in
    assert hub.auth == {f"Bearer {TOKEN}"}
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err
    for path, content in _all_written_bytes(pruned_folder, tmp_path):
        assert TOKEN.encode() not in content, path


def test_model_push_to_hub_with_token_argument_is_public_by_default(make_checkpoint, tokenizer, online, tmp_path):
    model = load_model(make_checkpoint("llama"))
    prune(model, {"method": "wanda", "sparsity": 0.5, "calibration": {"num_samples": 2, "seq_len": 32}},
          tokenizer, progress=False)
    with FakeHub() as hub:
        url = model.push_to_hub("bob/tiny-wanda", token=TOKEN, endpoint=hub.url)
    assert url == f"{hub.url}/bob/tiny-wanda"
    assert "visibility" not in hub.created[0]
    arrived = hub.files["bob/tiny-wanda"]
    assert json.loads(arrived["config.json"])["pruning_config"]["method"] == "wanda"
    assert b"wanda" in arrived["README.md"] and TOKEN.encode() not in arrived["README.md"]
    assert hub.auth == {f"Bearer {TOKEN}"}


def test_network_failure_is_a_clear_error_local_files_intact_and_retry_works(pruned_folder, online, monkeypatch,
                                                                             capsys):
    with FakeHub() as hub:
        dead = hub.url
    weights = (pruned_folder / "model.safetensors").read_bytes()
    with pytest.raises(HubPushError, match="local files are intact; run the same push again") as err:
        push_folder(pruned_folder, "carol/model", token=TOKEN, endpoint=dead)
    assert TOKEN not in str(err.value) and "ConnectError" in str(err.value)
    monkeypatch.setenv("HF_ENDPOINT", dead)
    assert main(["push", str(pruned_folder), "carol/model", "--token", TOKEN]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pruning-hf push: error: could not push") and err.count("\n") == 1 and TOKEN not in err
    assert (pruned_folder / "model.safetensors").read_bytes() == weights
    assert not [p for p in pruned_folder.iterdir() if p.name.startswith(".")]
    with FakeHub() as hub:
        push_folder(pruned_folder, "carol/model", token=TOKEN, endpoint=hub.url)
        push_folder(pruned_folder, "carol/model", token=TOKEN, endpoint=hub.url)  # again: exist_ok, same files
    assert hub.files["carol/model"]["model.safetensors"] == weights


def test_bad_input_is_refused_before_any_request(pruned_folder, online, monkeypatch, capsys):
    assert main(["push", str(pruned_folder), "not a repo id"]) == 2
    assert "repo id 'not a repo id'" in capsys.readouterr().err
    assert main(["push", str(pruned_folder.parent / "missing"), "alice/x"]) == 2
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(HubPushError, match="no Hugging Face token"):
        push_folder(pruned_folder, "alice/x")


def test_offline_mode_says_how_to_push(pruned_folder):
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE"):
        push_folder(pruned_folder, "alice/x", token=TOKEN)

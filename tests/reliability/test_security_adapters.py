"""Security, adapter files (issue #10): paths that leave the adapter roots (``..``, absolute paths, directory
symlinks, files linked out of an allowed directory, a directory swapped for a symlink after start-up) and
pickle weights (``.bin`` beside safetensors, a pickle named ``.safetensors``, a pickle sent straight to the
engine's load endpoint) are refused, and no pickle is ever unpickled."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import httpx
import pytest

from lorafleet.errors import ConfigError
from serve.gateway.config import parse_config
from tests.conftest import MODEL_NAME
from tests.serve.conftest import write_adapter_dir

pytestmark = pytest.mark.timeout(120)


class Exploit:
    """Unpickling this creates the file ``path``: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"base_model.model.lm_head.lora_A.weight": Exploit(marker)}))
    return path


def config(root: Path, path: str, name: str = "evil") -> dict:
    return {"backends": [{"name": "r0", "kind": "vllm", "url": "http://127.0.0.1:9", "base_model": "base"}],
            "adapter_roots": [str(root)], "adapters": [{"name": name, "path": path, "base_model": "base"}]}


def refused_by_config(raw: dict) -> str | None:
    try:
        parse_config(raw, Path("."), {})
    except ConfigError as e:
        return str(e)
    return None


def test_adapter_paths_outside_the_roots_are_refused(tmp_path, refusals) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_adapter_dir(root / "good")
    write_adapter_dir(outside / "secret")
    (root / "link-out").symlink_to(outside / "secret", target_is_directory=True)
    write_adapter_dir(root / "file-link")
    (root / "file-link" / "adapter_model.safetensors").unlink()
    (root / "file-link" / "adapter_model.safetensors").symlink_to(outside / "secret" / "adapter_model.safetensors")
    write_adapter_dir(root / "cfg-link")
    (root / "cfg-link" / "adapter_config.json").unlink()
    (root / "cfg-link" / "adapter_config.json").symlink_to(Path("/etc/hostname"))
    assert refused_by_config(config(root, "good")) is None
    for label, path in (("../ out of the root", "../outside/secret"), ("deep ../", "good/../../outside/secret"),
                        ("absolute path outside", str(outside / "secret")), ("/etc", "/etc"),
                        ("directory symlink out", "link-out"), ("weights file linked out", "file-link"),
                        ("config file linked out", "cfg-link"), ("the root itself", ".")):
        why = refused_by_config(config(root, path))
        refusals.expect(f"config: {label}", why is not None, why, "ConfigError")
        if label != "the root itself":
            assert "outside the adapter roots" in why or "link to files outside" in why, why


def test_pickle_weights_are_refused_and_never_loaded(tmp_path, engine_server, refusals) -> None:
    root, marker = tmp_path / "root", tmp_path / "PWNED"
    write_pickle(write_adapter_dir(root / "with-bin") / "adapter_model.bin", marker)
    only_bin = write_adapter_dir(root / "only-bin")
    (only_bin / "adapter_model.safetensors").unlink()
    write_pickle(only_bin / "adapter_model.bin", marker)
    disguised = write_adapter_dir(root / "disguised")
    write_pickle(disguised / "adapter_model.safetensors", marker)
    for name in ("with-bin", "only-bin", "disguised"):
        why = refused_by_config(config(root, name, name))
        refusals.expect(f"config: pickle in {name}", why is not None, why, "ConfigError")
    # The engine server itself (reachable only from the gateway's network), with a real adapter config:
    real_cfg = json.dumps({"r": 8, "lora_alpha": 16, "peft_type": "LORA", "target_modules": ["q_proj"],
                           "base_model_name_or_path": MODEL_NAME})
    for d in (only_bin, disguised):
        (d / "adapter_config.json").write_text(real_cfg)
    for label, path in (("pickle .bin only", only_bin), ("pickle named .safetensors", disguised), ("/etc", Path("/etc")),
                        ("a file, not a dir", Path("/etc/passwd"))):
        r = httpx.post(f"{engine_server.base_url}/v1/load_lora_adapter", json={"lora_name": f"evil-{label[:4]}",
                                                                                "lora_path": str(path)}, timeout=60)
        refusals.expect(f"engine load: {label}", 400 <= r.status_code < 500, r.status_code, "4xx")
    assert not marker.exists(), "a pickle was unpickled"
    models = httpx.get(f"{engine_server.base_url}/v1/models").json()["data"]
    assert not [m for m in models if m["id"].startswith("evil")]


def test_adapter_dirs_changed_after_start_up_are_refused(fakes, gateways, tmp_path, refusals) -> None:
    """The directory is checked again before every load: swapped for a symlink out of the root, or given a
    pickle file, after the gateway started."""
    fake = fakes()
    root, outside, marker = tmp_path / "root", tmp_path / "outside", tmp_path / "PWNED"
    for name in ("swapped", "grew-pickle", "fine"):
        write_adapter_dir(root / name)
    write_adapter_dir(outside / "secret")
    gw = gateways({"backends": [{"name": "r0", "kind": "vllm", "url": fake.url, "base_model": "base"}],
                   "adapter_roots": [str(root)],
                   "adapters": [{"name": n, "path": n, "base_model": "base"} for n in ("swapped", "grew-pickle", "fine")],
                   "limits": {"health_interval_s": 60, "drain_timeout_s": 5}})
    gw.wait_healthy("r0")
    shutil.rmtree(root / "swapped")
    (root / "swapped").symlink_to(outside / "secret", target_is_directory=True)
    write_pickle(root / "grew-pickle" / "adapter_model.bin", marker)
    with gw.client() as c:
        for name, needle in (("swapped", "outside the adapter roots"), ("grew-pickle", "pickle weights")):
            r = c.post("/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 1})
            refusals.expect(f"gateway load: {name}", r.status_code == 400 and needle in r.text, r.status_code, "400")
        assert c.post("/v1/completions", json={"model": "fine", "prompt": "x", "max_tokens": 1}).status_code == 200
    served = httpx.get(f"{fake.url}/v1/models").json()["data"]
    assert {m["id"] for m in served if m.get("parent")} == {"fine"}, "no refused adapter reached the engine"
    assert not marker.exists()

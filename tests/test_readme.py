"""The README's curl and openai-SDK examples run unmodified (but for the port) against a live server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
README_URL = "http://127.0.0.1:8000"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_both_examples():
    assert any("curl" in b and "/v1/chat/completions" in b for b in _blocks("bash"))
    assert any("from openai import OpenAI" in b for b in _blocks("python"))


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_example(server):
    (block,) = [b for b in _blocks("bash") if "curl" in b and "/v1/chat/completions" in b]
    out = subprocess.run(["bash", "-c", block.replace(README_URL, server.base_url)], capture_output=True, text=True,
                         timeout=100, check=True).stdout
    reply = json.loads(out)
    assert "Paris" in reply["choices"][0]["message"]["content"]


@pytest.mark.timeout(120)
def test_readme_openai_sdk_example(server):
    (block,) = [b for b in _blocks("python") if "from openai import OpenAI" in b]
    proc = subprocess.run([sys.executable, "-c", block.replace(README_URL, server.base_url)], capture_output=True,
                          text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "Paris" in lines[0]
    assert len(lines[1].strip()) > 0  # the streamed completion

"""JupyterLab opens the study's notebooks with the project's kernel: a headless server on localhost lists them
through its REST API and offers the `taskstudy` kernel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from taskstudy.book.pipeline import KERNEL, ensure_kernel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_jupyterlab_lists_notebooks_and_offers_the_kernel(repo_root, tmp_path):
    ensure_kernel()
    port, token = free_port(), "taskstudy-test"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={repo_root}", "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ,
                                                                  "JUPYTER_RUNTIME_DIR": str(tmp_path)})

    def get(path: str) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    try:
        for _ in range(120):
            try:
                listing = get("/api/contents/notebooks")
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("jupyter lab did not answer on localhost")
        names = {item["name"] for item in listing["content"]}
        assert names == {p.name for p in (repo_root / "notebooks").glob("*.ipynb")}
        assert KERNEL in get("/api/kernelspecs")["kernelspecs"]
    finally:
        proc.terminate()
        proc.wait(30)

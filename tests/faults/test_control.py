"""The embedded server's routing control refuses requests without the engine's token (403)
and paths outside the capture folder (400); outputs honour the umask."""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request

import pytest

from artifact.core.io import atomic_write_text, temp_dir_beside
from artifact.engines.base import CONTROL_TOKEN_HEADER, ServerLimits


def post_routing(server, body: dict, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers[CONTROL_TOKEN_HEADER] = token
    req = urllib.request.Request(
        server.base_url + "/artifact/routing", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.engine
def test_routing_control_needs_the_token_and_stays_in_the_capture_folder(tiny_engine, tmp_path):
    pytest.importorskip("torch")
    unit = tmp_path / "unit"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    server = tiny_engine.start("grouped_mm", ServerLimits(2, 128), unit / "server.log")
    try:
        inside = {"path": str(unit / "run.routing")}
        assert post_routing(server, inside, None) == 403
        assert post_routing(server, inside, "0" * 32) == 403
        assert post_routing(server, {"path": None}, "wrong") == 403
        (unit / "escape").symlink_to(tmp_path)
        for hostile in (victim, unit / ".." / victim.name, unit / "escape" / victim.name, unit):
            assert post_routing(server, {"path": str(hostile)}, server.token) == 400, hostile
        assert victim.read_text() == "precious"
        assert not (unit / "run.routing").exists()
        server.start_routing(unit / "run.routing")  # the engine's own requests carry the token
        server.stop_routing()
        assert (unit / "run.routing").exists()
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "out.json", "{}\n")
        folder = temp_dir_beside(tmp_path / "model")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert folder.name.startswith(".model.") and not any(folder.iterdir())

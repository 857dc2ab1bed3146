"""containers/vllm_surface.py `write`: dumps -> cli_surface.json, as the vLLM engine reads it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from artifact.engines.vllm.surface import cli_surface, read_cli_surface

REPO = Path(__file__).resolve().parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "vllm_surface", REPO / "containers/vllm_surface.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_then_read(tmp_path, monkeypatch):
    generator = load_generator()
    table = tmp_path / "cli_surface.json"
    monkeypatch.setattr(generator, "TABLE", table)
    dumps = []
    for version, flags, env in (
        ("0.1.0", ["--a", "--b"], ["VLLM_X", "VLLM_Y"]),
        ("0.2.0", ["--b", "--c"], ["VLLM_Y"]),
    ):
        path = tmp_path / f"surface-{version}.json"
        path.write_text(
            "a warning line\n" + json.dumps({"version": version, "flags": flags, "env": env})
        )
        dumps.append(str(path))
    assert generator.main(["write", *dumps, "--bracket", "abc1234=0.1.0,0.2.0"]) == 0
    surface = read_cli_surface(table)
    assert list(surface.builds) == ["0.1.0", "0.2.0", "abc1234"]
    bracketed = surface.builds["abc1234"]
    assert bracketed.flags == {"--b"} and bracketed.env == {"VLLM_Y"}
    assert surface.builds["abc1234"].version == "between 0.1.0 and 0.2.0"
    assert surface.builds["0.1.0"].flags == {"--a", "--b"}


def test_package_table_has_the_pinned_builds():
    surface = cli_surface()
    assert {"0.10.1.1", "0.10.2", "0.11.0", "2f13319f"} <= set(surface.builds)
    builds = surface.builds
    assert builds["2f13319f"].flags == builds["0.10.1.1"].flags & builds["0.10.2"].flags
    assert "--enable-eplb" in surface.builds["0.11.0"].flags

"""Stage `install`: prepare what the engine serves.

`local` (seeded model): build the Mixtral-architecture model from its seed, with the Mixtral
tokenizer, into the cache (`$MOE_ARTIFACT_CACHE`, default ~/.cache/moe-artifact/models/),
keyed by the hash of the model section, so run directories share it; rebuilt when missing or
when its files no longer match the recorded fingerprint. Writes `install/model.json`:
where the model is, its spec and the sha256 of each file.

Hub models (`perlmutter`): the vLLM images and the weights in the Hugging Face cache, see
artifact.engines.vllm.hpc_install;
`install/model.json` names the cached snapshot, `install/images.json`
what each image holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from artifact.core.errors import ArtifactError
from artifact.core.io import atomic_write_json
from artifact.core.records import ModelRecord, VllmSurfaceRecord, read_record, write_record
from artifact.core.runner import Stage, StageContext, StageOutcome
from artifact.engines.base import Engine, get_engine
from artifact.engines.vllm.surface import read_dump

CACHE_ENV = "MOE_ARTIFACT_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "moe-artifact"))


def installed_model_dir(ctx: StageContext) -> Path:
    """The model folder the install stage recorded (for later stages)."""
    record = read_record(ctx.layout.model_record, ModelRecord)
    path = Path(record.model_dir)
    if not path.is_dir():
        raise ArtifactError(
            f"the installed model folder {path} is gone; run `moe-artifact install --force`",
            path=ctx.layout.model_record,
        )
    return path


def installed_engine(ctx: StageContext) -> Engine:
    """The profile's engine on the installed model (and the installed vLLM's surface)."""
    return get_engine(ctx.profile, installed_model_dir(ctx), ctx.layout)


def vllm_python(ctx: StageContext) -> Path:
    """The interpreter of the profile's own vLLM venv (engine.venv)."""
    from artifact.engines.vllm.engine import VllmEngine

    python = Path(VllmEngine(ctx.profile, Path()).vllm_executable()).with_name("python")
    if not python.exists():
        raise ArtifactError(
            f"{python} not found: build the venv first (`nox -s vllm-env`)",
            path=ctx.profile.path,
            where="field 'engine.venv'",
        )
    return python


def install_vllm_surface(ctx: StageContext) -> str:
    """Read `vllm serve`'s flags and VLLM_* variables from the installed vLLM itself."""
    python = vllm_python(ctx)
    try:
        data = read_dump(python)
    except RuntimeError as exc:
        raise ArtifactError(
            f"cannot read the installed vLLM's command line: {exc}",
            path=ctx.profile.path,
            where="field 'engine.venv'",
        ) from None
    want = ctx.profile.engine.vllm_ref
    if want and not data["version"].startswith(want.lstrip("v")):
        raise ArtifactError(
            f"the vLLM of {python} is {data['version']}, the profile asks for {want}: "
            "rebuild it (`nox -s vllm-env`) or fix the ref",
            path=ctx.profile.path,
            where="field 'engine.vllm_ref'",
        )
    write_record(ctx.layout.vllm_surface, VllmSurfaceRecord(python=str(python), **data))
    return f"vLLM {data['version']} ({len(data['flags'])} serve flags, read from {python})"


class InstallStage(Stage):
    name = "install"
    # modes: a mode may name its own image and vLLM build
    profile_sections = ("model", "engine", "modes")

    def extra_inputs(self, ctx: StageContext) -> dict[str, str]:
        """Images hold the vLLM plugin: a change of its source redoes the install, which
        rebuilds the images labelled with other plugin source."""
        engine = ctx.profile.engine
        if engine.kind == "vllm" and engine.venv:
            # a rebuilt venv (nox -s vllm-env rewrites its stamp) is read again
            stamp = vllm_python(ctx).parent.parent / ".installed"
            return {"vllm_venv": stamp.read_text() if stamp.is_file() else str(stamp.parent)}
        if ctx.profile.model.source != "hub" or engine.kind != "vllm":
            return {}
        from artifact.engines.vllm.hpc_install import plugin_source_hash

        return {"plugin_source": plugin_source_hash()}

    def run(self, ctx: StageContext) -> StageOutcome:
        spec = ctx.profile.model
        if spec.source == "hub":
            from artifact.engines.vllm.hpc_install import install_hub

            hub, summary = install_hub(ctx.profile, ctx.layout)
            write_record(ctx.layout.model_record, ModelRecord.model_validate(hub))
            if ctx.profile.engine.kind == "vllm" and ctx.profile.engine.venv:
                summary += "; " + install_vllm_surface(ctx)
            return StageOutcome(summary=summary)
        from artifact.engines.transformers.seeded_model import (
            FILES_FORMAT,
            build_model,
            fingerprint,
        )

        device = ctx.profile.engine.device
        keyed = spec.model_dump(mode="json") | {"files_format": FILES_FORMAT}
        if device != "cpu":  # weights drawn on a GPU differ from the CPU's for the same seed
            keyed["build_device"] = device
        key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
        target = cache_root() / "models" / f"{spec.name}-{key}"
        stamp = target / ".fingerprint.json"
        reused = False
        if target.is_dir() and stamp.is_file():
            reused = json.loads(stamp.read_text()) == fingerprint(target)
        if reused:
            files = json.loads(stamp.read_text())
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            files = build_model(spec, target, device=device)
            atomic_write_json(stamp, files)
        record = ModelRecord.model_validate(
            {
                "model_dir": str(target),
                "name": spec.name,
                "source": spec.source,
                "seed": spec.seed,
                "dtype": spec.dtype,
                "architecture": spec.architecture,
                "build_device": device,
                "files": files,
            }
        )
        write_record(ctx.layout.model_record, record)
        surface = ""
        if ctx.profile.engine.kind == "vllm" and ctx.profile.engine.venv:
            surface = "; " + install_vllm_surface(ctx)
        size_mb = sum((target / f).stat().st_size for f in files) / 2**20
        how = "reused from cache" if reused else "built"
        return StageOutcome(
            summary=f"model {spec.name} (seed {spec.seed}, {size_mb:.0f} MB) {how} at {target}"
            + surface
        )


STAGE = InstallStage()

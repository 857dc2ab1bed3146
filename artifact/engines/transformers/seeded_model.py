"""A Mixtral-architecture model initialised from a fixed seed, with the real Mixtral tokenizer.

Built once by the install stage into a cache folder and then loaded like any Hugging Face
checkpoint (`transformers serve <dir>`). Nothing is downloaded: the tokenizer is converted
from the SentencePiece model inside the mistral-common wheel (conversion needs protobuf),
the weights come from `torch.manual_seed(seed)` and MixtralConfig's own initialisation.
Same seed and architecture, same bytes (checked by `fingerprint`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from artifact.config.profiles import ModelSpec
from artifact.core.errors import ArtifactError
from artifact.core.io import sha256_file, temp_dir_beside
from artifact.workload.tokenizer import tokenizer_path

TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "add_bos_token": True,
    "add_eos_token": False,
    # legacy=True matches Mixtral-8x7B-v0.1's own tokenizer_config and plain SentencePiece.
    "legacy": True,
    "model_max_length": None,
}


# Part of the model cache's key: bumped when the files written for the same spec change.
FILES_FORMAT = 2


def build_tokenizer(target: Path, max_length: int) -> None:
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(tokenizer_path(), Path(tmp) / "tokenizer.model")
        config = dict(TOKENIZER_CONFIG, model_max_length=max_length)
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(config))
        try:
            tokenizer = AutoTokenizer.from_pretrained(tmp)
        except ImportError as exc:
            raise ArtifactError(
                f"cannot convert the Mixtral tokenizer: {exc}".splitlines()[0]
                + " (pip install protobuf)"
            ) from None
        if len(tokenizer) != 32000:
            raise ArtifactError(
                f"tokenizer conversion gave {len(tokenizer)} tokens, expected 32000; "
                "install protobuf so the SentencePiece model converts",
                path=tokenizer_path(),
            )
        tokenizer.save_pretrained(target)
    # transformers 5 lists bos/eos again as `extra_special_tokens`; transformers 4 (vLLM 0.11's)
    # wants a mapping there and refuses the folder. The tokens are named as bos/eos anyway.
    saved = Path(target) / "tokenizer_config.json"
    written = json.loads(saved.read_text())
    if isinstance(written.get("extra_special_tokens"), list):
        del written["extra_special_tokens"]
        saved.write_text(json.dumps(written, indent=2) + "\n")


def build_model(spec: ModelSpec, target: Path, device: str = "cpu") -> dict[str, str]:
    """Write the seeded model and tokenizer into `target` atomically; return file hashes.

    `device` is where the weights are drawn: a model of Mixtral-8x7B's layer shapes (2.9 GB
    a layer in bf16) initialises in seconds on a GPU and in minutes on a CPU. The two draw
    different numbers from the same seed (different generators), so the device is part of
    what the install stage keys its cache on. Large models are saved in shards (several
    `model-XXXXX-of-YYYYY.safetensors` and an index), which `fingerprint` covers.
    """
    import torch

    from transformers import GenerationConfig, MixtralConfig, MixtralForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if spec.source != "seeded":
        raise ArtifactError(f"model '{spec.name}' is not a seeded model (source: {spec.source})")
    target = Path(target)
    tmp = temp_dir_beside(target)
    try:
        # any MixtralConfig fields, so no one type per keyword: MixtralConfig checks them
        fields: dict[str, Any] = dict(spec.architecture)
        config = MixtralConfig(**fields, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
        torch.manual_seed(spec.seed)
        dtype = getattr(torch, spec.dtype)
        with torch.device(device):
            model = MixtralForCausalLM(config).to(dtype).eval()
        model.save_pretrained(tmp, safe_serialization=True)
        del model
        release_cached_gpu_memory(device)  # the servers started next need it
        GenerationConfig(bos_token_id=1, eos_token_id=2, do_sample=False).save_pretrained(tmp)
        build_tokenizer(tmp, spec.max_model_len)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return fingerprint(target)


def release_cached_gpu_memory(device: str) -> None:
    """Hand the memory torch's allocator keeps for reuse back to the GPU.

    Other processes (the servers) share the card, and transformers' continuous batching sizes
    its cache from the card's free memory: 23 GB of freed weights held here left an H100
    5 GB, and a 64-sequence server failed to start.
    """
    import gc

    import torch

    if torch.device(device).type == "cuda":
        gc.collect()  # a dropped model can sit in a reference cycle until the next collection
        torch.cuda.empty_cache()


def fingerprint(model_dir: Path) -> dict[str, str]:
    """sha256 of every file of a built model folder."""
    return {
        p.name: sha256_file(p)
        for p in sorted(Path(model_dir).iterdir())
        if p.is_file() and not p.name.startswith(".")
    }

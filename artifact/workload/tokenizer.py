"""The Mixtral tokenizer, read from the SentencePiece model inside the mistral-common wheel.

No hub download: `mistral_common/data/tokenizer.model.v1` is the 32000-token model that
Mixtral-8x7B-v0.1 ships. Encoding is plain SentencePiece without BOS/EOS, which equals
Hugging Face's `tokenizer(text, add_special_tokens=False)` for this model.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from artifact.core.errors import ArtifactError

TOKENIZER_FILE = "tokenizer.model.v1"
MIXTRAL_VOCAB_SIZE = 32000


def tokenizer_path() -> Path:
    try:
        path = resources.files("mistral_common") / "data" / TOKENIZER_FILE
    except ModuleNotFoundError:
        raise ArtifactError(
            "the mistral-common package is not installed; `pip install mistral-common` "
            "(it ships the Mixtral tokenizer)"
        ) from None
    path = Path(str(path))
    if not path.is_file():
        raise ArtifactError(
            f"mistral-common does not ship data/{TOKENIZER_FILE}; install mistral-common>=1.5",
            path=path,
        )
    return path


@functools.lru_cache(maxsize=1)
def mixtral_tokenizer():
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path()))
    if sp.vocab_size() != MIXTRAL_VOCAB_SIZE:
        raise ArtifactError(
            f"expected a {MIXTRAL_VOCAB_SIZE}-token model, got {sp.vocab_size()}",
            path=tokenizer_path(),
        )
    return sp


def encode(text: str) -> list[int]:
    """Token ids of `text` without special tokens."""
    return mixtral_tokenizer().encode(text)


def encode_batch(texts: list[str]) -> list[list[int]]:
    return mixtral_tokenizer().encode(list(texts))


def decode(ids: list[int]) -> str:
    return mixtral_tokenizer().decode(list(ids))

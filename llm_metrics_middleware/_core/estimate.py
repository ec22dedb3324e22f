"""Token estimates for streams that carry no usage.

OpenAI's chat streams carry usage only when the client asks for it
(``stream_options.include_usage``); many clients do not. Counting nothing would be a lie
by omission, so we estimate, and every estimate is exported as such.

The default counts about four bytes of text per token, which is close for English and
code. When ``tiktoken`` is installed *and* its encoding file is already on disk, its
``o200k_base`` encoding is used instead; we never let it download (the request path must
not touch the network). A user may pass any ``Callable[[str], int]`` instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable

logger = logging.getLogger("llm_metrics_middleware")

TokenCounter = Callable[[str], int]

BYTES_PER_TOKEN = 4

_ENCODING_FILES = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}


def tokens_from_bytes(n_bytes: int) -> int:
    """The default estimate: a token per :data:`BYTES_PER_TOKEN` bytes, rounded up."""
    return -(-n_bytes // BYTES_PER_TOKEN)


def _tiktoken_cache_dir() -> str:
    # Mirrors tiktoken.load.read_file_cached.
    return (
        os.environ.get("TIKTOKEN_CACHE_DIR")
        or os.environ.get("DATA_GYM_CACHE_DIR")
        or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    )


def offline_tiktoken() -> TokenCounter | None:
    """tiktoken's counter if tiktoken and an encoding file are both on disk, else None."""
    try:
        import tiktoken
    except ImportError:
        return None
    cache = _tiktoken_cache_dir()
    for name, url in _ENCODING_FILES.items():
        cached = os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())
        if os.path.exists(cached):
            try:
                encoding = tiktoken.get_encoding(name)
            except Exception:  # a damaged cache file: fall back to the default
                logger.warning("tiktoken encoding %s is on disk but failed to load", name, exc_info=True)
                continue

            def count(text: str, _encode: Callable[..., list[int]] = encoding.encode_ordinary) -> int:
                return len(_encode(text))

            return count
    return None

"""``extract_whole_json`` answers exactly as ``UsageExtractor(JSON)`` fed the same bytes in one chunk.

The middleware reads a JSON body that came whole with it (one parse, no extractor), so every
body the general path reads is checked here against it: the wire corpus, the non-LLM
bodies, and the awkward ones (a byte order mark, NDJSON, an array, garbage, absurd counts).
"""

from __future__ import annotations

import json

import pytest

from llm_metrics_middleware._core.extractor import JSON, UsageExtractor
from llm_metrics_middleware._core.whole import extract_whole_json

from .wire.cases import CASES, NON_LLM_CASES

_USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
AWKWARD = [
    b"",
    b"   ",
    b"\xef",
    b"\xef\xbb",
    b"\xef\xbb\xbf" + json.dumps({"model": "m", "usage": _USAGE}).encode(),
    json.dumps({"model": "m", "usage": _USAGE}).encode(),
    b"  " + json.dumps({"model": "m", "usage": _USAGE}).encode() + b"\n",
    json.dumps([{"model": "m", "usage": _USAGE}]).encode(),
    b'{"usage": {"prompt_tokens": 1}}\n{"usage": {"prompt_tokens": 2, "completion_tokens": 3}}\n',
    b'{"model": "m", "usage": {"prompt_tokens": -1, "completion_tokens": 2}}',
    b'{"model": "m", "usage": {"prompt_tokens": true}}',
    b'{"model": "m", "choices": [{"message": {"content": "no usage here at all"}}]}',
    b'{"model": 5, "usage": null}',
    b'{"usage": {"prompt_tokens": 1e400}}',
    b'{"a": NaN, "usage": {"prompt_tokens": 3, "completion_tokens": 4}}',
    b'{"model": "\\ud800", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}',
    # The plain chat path's edges: each must answer as read_chat + usage_of do.
    b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7.0}}',
    b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": null}}',
    b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}',
    b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 2}}',
    b'{"model": "m", "usage": {"prompt_tokens": 50000000, "completion_tokens": 50000000, "total_tokens": 50000000}}',
    b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 50000001}}',
    b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 99999999999999999999999}}',
    b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_cache_hit_tokens": 2}}',
    b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_cache_hit_tokens": -2}}',
    b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,'
    b' "prompt_tokens_details": {"cached_tokens": 9}, "completion_tokens_details": {"reasoning_tokens": 9}}}',
    b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,'
    b' "prompt_tokens_details": {"cached_tokens": true}, "completion_tokens_details": {"reasoning_tokens": 1.5}}}',
    b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 9,'
    b' "prompt_tokens_details": null, "completion_tokens_details": {"reasoning_tokens": 2}}}',
    b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 9,'
    b' "completion_tokens_details": {"reasoning_tokens": 2}}, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}',
    b'{"model": "", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}',
    b'{"model": "m", "modelVersion": "v", "usage": {"prompt_tokens": false, "completion_tokens": 4, "total_tokens": 7}}',
    b'{"type": "response.failed", "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}',
    b'{"model": "m", "usage": {"completion_tokens": 4, "input_tokens": 3, "total_tokens": 7}}',
    b"not json",
    b'{"unterminated": ',
    b"[1, 2, 3]",
    b"42",
]


def _general(data: bytes, want_text: bool, counter: object) -> object:
    extractor = UsageExtractor(JSON, want_text=want_text, token_counter=counter, operation="chat.completions")  # type: ignore[arg-type]
    extractor.feed(data)
    return extractor.close()


@pytest.mark.parametrize("want_text", [False, True])
@pytest.mark.parametrize("counter", [None, len])
@pytest.mark.parametrize(
    "data",
    [c.body for c in CASES if c.content_type.startswith("application/json")]
    + [c.body for c in NON_LLM_CASES]
    + AWKWARD,
)
def test_same_extraction_as_the_extractor(data: bytes, want_text: bool, counter: object) -> None:
    whole = extract_whole_json(data, want_text=want_text, token_counter=counter, operation="chat.completions")  # type: ignore[arg-type]
    assert whole == _general(
        data, want_text, counter
    )

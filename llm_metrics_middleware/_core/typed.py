"""Typed decoding of a call's two small bodies with msgspec (the ``accel`` extra), when sure.

A non-streamed call parses its request body for a few fields (``model``, ``user``...) and
its response body for ``model`` and ``usage``. A full parse builds every message and choice
as Python objects, only to free them: about a quarter of a metered call's instructions.
msgspec's typed decoding (``msgspec.json.Decoder(SomeStruct)``) validates the whole body but
builds only the fields a Struct names; everything else is skipped.

The answers must be the ones :mod:`.fastjson` gives (json.loads semantics), so a typed
decode only answers where it is sure, and returns None for everything else: the caller
then takes its usual path, which decides. What a typed decode accepts and json.loads would
not, and what it could represent differently, is routed there:

* **UTF-8**: msgspec does not validate the bytes of strings it skips; a body that is not
  ASCII is first decoded as UTF-8 (what ``fastjson`` does before ``json.loads``).
* **Nesting**: orjson reads up to 1,024 levels whatever the stack; msgspec and json.loads
  stop at the interpreter's recursion limit, msgspec a few levels deeper than the fallback's
  json.loads (which runs some Python frames below its caller). So a typed decode answers
  only where orjson is the first parser and a body cannot nest past 1,024 levels (at most
  2 KB, or an interpreter before 3.12 whose recursion limit is at most 1,024): what it
  accepts, orjson accepts, and orjson's answer is the fallback's.
* **Numbers**: a kept integer past 64 bits is a float to orjson, a kept float is left to
  the parser that decides; both fall back (the Struct takes neither). A number outside a
  double's range is refused by msgspec in a kept field and skipped elsewhere; orjson
  refuses it, and json.loads reads it (as infinity): that body's fields are the same, the
  one case orjson does not decide. Nested almost to the interpreter's recursion limit as
  well, json.loads refuses it: the request is decoded as deep (see ``_deeper``).
* Everything msgspec refuses (``NaN``, lone surrogates, a byte order mark, a top-level
  array or scalar, a wanted field of a type the Struct does not take) falls back.

The prompt's size (for an estimate, or a limit's cost) needs the messages: when a call asks
for it, the peek gives the same bytes to the full parse then (most calls never ask).
"""

from __future__ import annotations

import keyword
import sys
from collections.abc import Callable
from typing import Annotated, Any, Union

from . import fastjson
from .jsonscan import JSONObject
from .providers.facts import REQUEST_FIELDS

try:
    import msgspec
except ImportError:  # the full parse of .fastjson only
    msgspec = None  # type: ignore[assignment]

#: A body this long or shorter nests at most orjson's 1,024 levels (two bytes a level).
_SHALLOW = 2 * 1024
#: Whether the recursion limit binds msgspec before orjson's limit could (see above).
_LIMIT_FIRST = sys.version_info < (3, 12)


def _deeper(frames: int, decode: Callable[[bytes | bytearray], Any]) -> Callable[[bytes | bytearray], Any]:
    """A function calling ``decode(data)`` ``frames`` Python frames below itself.

    msgspec and json's scanner stop at the interpreter's recursion limit, and the fallback's
    json.loads runs six frames below its caller (value_or_none, loads, _loads_stdlib,
    json.loads, decode, raw_decode); before 3.12 each frame takes a level of the same
    budget. Decoding as deep makes msgspec refuse whatever json.loads would refuse there
    (which matters for a body orjson refuses too: a number beyond a double's range, nested
    almost to the limit). Plain functions, written out: a frame costs a third more as a
    closure, and half again as a recursive function with a counter.
    """
    lines = ["def frame_0(data):", "    return decode(data)"]
    for i in range(1, frames + 1):
        lines += [f"def frame_{i}(data):", f"    return frame_{i - 1}(data)"]
    namespace: dict[str, Any] = {"decode": decode}
    exec("\n".join(lines), namespace)
    call: Callable[[bytes | bytearray], Any] = namespace[f"frame_{frames}"]
    return call


_TOP_FIELDS = tuple(path[0] for path in REQUEST_FIELDS if len(path) == 1)
_PARENTS = tuple(dict.fromkeys(path[0] for path in REQUEST_FIELDS if len(path) == 2))
_NESTED = tuple((parent, tuple(p[1] for p in REQUEST_FIELDS if len(p) == 2 and p[0] == parent)) for parent in _PARENTS)
_NAMES = (*_TOP_FIELDS, *_PARENTS, *(key for _, keys in _NESTED for key in keys))

#: Whether a typed decode can answer here: msgspec and orjson installed, and request fields
#: that can be Struct attributes.
ENABLED = (
    msgspec is not None
    and fastjson.BACKEND == "orjson"
    and all(len(path) <= 2 for path in REQUEST_FIELDS)
    and not set(_TOP_FIELDS) & set(_PARENTS)
    and all(name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_") for name in _NAMES)
)

def _unsure(data: bytes | bytearray) -> bool:
    """Whether a body that is long or not ASCII must be left to the full parse: it could
    nest past orjson's limit where msgspec's is higher, or it is not UTF-8."""
    if len(data) > _SHALLOW and not (_LIMIT_FIRST and sys.getrecursionlimit() <= 1024):
        return True
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


def _fields_builder(parents: dict[str, Any]) -> Callable[[Any], JSONObject]:
    """The function that turns a decoded request Struct into the peek's sparse object.

    Written out from the table's field names, as dataclasses and namedtuple write theirs: a
    loop over the names (getattr, tests, a tuple walk) costs as much as the decode itself.
    Null and absent are kept as nothing, as the full parse's peek keeps them.
    """
    lines = ["def build(request):", "    fields = {}"]
    for key in _TOP_FIELDS:
        lines += [
            f"    value = request.{key}",
            "    if value is not None and value is not UNSET:",
            f"        fields[{key!r}] = value",
        ]
    for i, (parent, keys) in enumerate(_NESTED):
        lines += [f"    node = request.{parent}", f"    if node.__class__ is PARENT_{i}:"]
        for key in keys:
            lines += [
                f"        value = node.{key}",
                "        if value is not None and value is not UNSET:",
                f"            fields.setdefault({parent!r}, {{}})[{key!r}] = value",
            ]
    lines.append("    return fields")
    namespace: dict[str, Any] = {"UNSET": _UNSET, **{f"PARENT_{i}": parents[p] for i, (p, _) in enumerate(_NESTED)}}
    exec("\n".join(lines), namespace)  # names checked as identifiers (ENABLED)
    build: Callable[[Any], JSONObject] = namespace["build"]
    return build


if ENABLED:
    _UNSET: Any = msgspec.UNSET
    _UnsetType: Any = msgspec.UnsetType

    def _struct(name: str, fields: list[tuple[str, Any, Any]]) -> Any:
        # gc=False: these hold only scalars or other such Structs (no cycle is possible).
        return msgspec.defstruct(name, fields, gc=False)

    # What the peek keeps as it is: a string, a bool, an int that orjson reads as an int (int64
    # here, a few more to orjson), or null and absent (kept as nothing). Anything else (a
    # float, an array, an object) fails validation, and the full parse decides.
    _Scalar = Union[str, bool, Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)], None, _UnsetType]
    _PARENT_STRUCTS = {parent: _struct(f"Request_{parent}", [(k, _Scalar, _UNSET) for k in keys]) for parent, keys in _NESTED}
    _Request = _struct(
        "Request",
        [(name, _Scalar, _UNSET) for name in _TOP_FIELDS]
        + [(parent, Union[_PARENT_STRUCTS[parent], None, _UnsetType], _UNSET) for parent in _PARENTS],
    )
    # The peek's full parse refuses a body nested past json.loads's limit (its fields are
    # none): the request is decoded seven frames down, with request_fields' own (six are
    # exact, seven leave a level to spare; tests/test_typed.py scans the limit at two stack
    # depths and fails with five). A response needs none: where the full parse refuses a
    # valid body, the incremental extractor reads it and says what the whole-body reading
    # says (tests/test_whole.py), which the typed reading says too.
    _decode_request = _deeper(6, msgspec.json.Decoder(_Request).decode)
    _build_fields = _fields_builder(_PARENT_STRUCTS)


def request_fields(data: bytes | bytearray) -> JSONObject | None:
    """The peek's fields of a small request body (what ``BodyPeek._parse_small`` keeps), or
    None when only the full parse can say."""
    if not ENABLED or ((len(data) > _SHALLOW or not data.isascii()) and _unsure(data)):
        return None
    try:
        request = _decode_request(data)
    except (ValueError, RecursionError):  # msgspec.DecodeError (ValidationError too) is a ValueError
        return None
    return _build_fields(request)


if ENABLED:
    # The fields whole._plain_chat reads of an OpenAI-format chat completion, and no other.
    PromptDetails = _struct("PromptDetails", [("cached_tokens", Any, _UNSET)])
    CompletionDetails = _struct("CompletionDetails", [("reasoning_tokens", Any, _UNSET)])
    ChatUsage = _struct(
        "ChatUsage",
        [
            ("prompt_tokens", Any, _UNSET),
            ("completion_tokens", Any, _UNSET),
            ("total_tokens", Any, _UNSET),
            ("prompt_tokens_details", Union[PromptDetails, None, _UnsetType], _UNSET),
            ("completion_tokens_details", Union[CompletionDetails, None, _UnsetType], _UNSET),
            ("prompt_cache_hit_tokens", Any, _UNSET),
        ],
    )
    UNSET = _UNSET


def chat_decoder(unbilled_key: str, others: tuple[str, ...] = ()) -> Callable[[bytes | bytearray], Any] | None:
    """A reader of a response body as a Struct with ``model``, ``usage`` (a ``ChatUsage``,
    None or UNSET) and ``unbilled_key``, that returns None where the full parse could
    answer otherwise; None itself where typed decoding is off.

    ``others``: more top-level keys (not ``model``, ``usage`` or ``unbilled_key``) to read,
    as they are, into the Struct's attributes ``other_0``, ``other_1``... in that order
    (UNSET when absent): any JSON key may be one.
    """
    if not ENABLED or not unbilled_key.isidentifier() or keyword.iskeyword(unbilled_key) or unbilled_key.startswith("_"):
        return None
    fields: list[tuple[str, Any, Any]] = [("model", Any, _UNSET), ("usage", Union[ChatUsage, None, _UnsetType], _UNSET)]
    if unbilled_key not in ("model", "usage"):
        fields.append((unbilled_key, Any, _UNSET))
    # An encoded name given twice (an other key that is model, usage or unbilled_key) is
    # refused by msgspec here, when the module is imported.
    fields += [(f"other_{i}", Any, msgspec.field(default=_UNSET, name=key)) for i, key in enumerate(others)]
    decode = msgspec.json.Decoder(_struct("ChatCompletion", fields)).decode

    def chat(data: bytes | bytearray) -> Any:
        if (len(data) > _SHALLOW or not data.isascii()) and _unsure(data):
            return None
        try:
            return decode(data)
        except (ValueError, RecursionError):  # msgspec.DecodeError (ValidationError too) is a ValueError
            return None

    return chat

"""Decoding stored XCom values without trusting them.

A task can push anything: a pickle, a huge blob, NaN, a string where a number was
expected. Every way a stored value can fail to become a sample raises `XcomValueError`
with a short, fixed `reason` that the bridge can count as a label value, so one bad
value is counted and skipped instead of stopping a refresh or serving a wrong number.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Final, Literal

Reason = Literal["missing", "too_large", "pickled", "invalid_utf8", "invalid_json", "too_deep",
                 "path_not_found", "not_numeric", "not_finite", "not_a_string", "negative"]
REASONS: Final[tuple[Reason, ...]] = (
    "missing", "too_large", "pickled", "invalid_utf8", "invalid_json", "too_deep",
    "path_not_found", "not_numeric", "not_finite", "not_a_string",
    "negative",  # a counter only adds: a negative value would make it go down
)

MAX_DEPTH = 100  # nesting beyond this is refused before anything recurses into it
MAX_INT_DIGITS = 400  # longer integers cannot be a float sample: they parse as infinite
PICKLE_PROTO = 0x80  # first byte of every pickle of protocol 2 or later
_WRAPPER_KEYS = frozenset({"__classname__", "__version__", "__data__"})
_JSON_TYPES = (dict, list, str, int, float, bool)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


class XcomValueError(Exception):
    """Why a stored value gives no sample; `reason` is one of REASONS.

    The message never quotes the value itself: it may be large or confidential.
    """

    def __init__(self, reason: Reason, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown XCom error reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: Reason = reason
        self.detail = detail


def decode(stored: object, max_bytes: int, size: int | None = None) -> object:
    """The JSON value of one `xcom.value`, with Airflow's type wrappers removed.

    `stored` is what the driver returns for the column:
    - UTF-8 JSON text as bytes (`bytes`, `memoryview`): Airflow 2.x `bytea` from its XCom
      encoder, possibly with the tokens NaN/Infinity/-Infinity (decoded to floats; see
      `to_number`), or Airflow 3.x `jsonb` fetched as text, so that no driver parses a
      hostile value before these checks. A pickle is refused, never loaded. The length is
      checked before anything is decoded, the nesting depth before anything recurses.
    - an already parsed value (dict, list, str, int, float, bool), as a driver returns
      `jsonb`; a `str` is then a JSON string value, not JSON text.
    - None: SQL NULL -> `missing`; so is a JSON null, however it is stored (text or
      parsed): the task pushed nothing.
    `size` is the stored size in bytes when the caller knows it (e.g. `octet_length` in
    the query); above `max_bytes` it gives `too_large` even when the value was not
    fetched (None), so a query can leave large values in the database.
    """
    if size is not None and size > max_bytes:
        raise XcomValueError("too_large", f"{size} bytes, limit {max_bytes}")
    if stored is None:
        raise XcomValueError("missing")
    if isinstance(stored, bytes | bytearray | memoryview):
        value = _parse_text(stored, max_bytes)
    elif isinstance(stored, _JSON_TYPES):
        value = stored
    else:
        raise XcomValueError("invalid_json", f"unexpected {type(stored).__name__}")
    if value is None:
        raise XcomValueError("missing", "a JSON null")
    if _depth(value) > MAX_DEPTH:
        raise XcomValueError("too_deep", f"nested deeper than {MAX_DEPTH} levels")
    return unwrap(value)


def _depth(value: object) -> int:
    """Nesting depth of lists and objects, without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else \
            item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _parse_int(digits: str) -> int | float:
    """Integers too long for a float sample (or for Python's own conversion) are infinite."""
    return int(digits) if len(digits.lstrip("-")) <= MAX_INT_DIGITS else math.copysign(
        math.inf, -1.0 if digits.startswith("-") else 1.0)


def _parse_text(stored: bytes | bytearray | memoryview, max_bytes: int) -> object:
    view = memoryview(stored)
    if view.nbytes > max_bytes:
        raise XcomValueError("too_large", f"{view.nbytes} bytes, limit {max_bytes}")
    data = view.tobytes()
    if data[:1] == bytes((PICKLE_PROTO,)):
        raise XcomValueError("pickled", "enable_xcom_pickling wrote a pickle; it is not loaded")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise XcomValueError("invalid_utf8", f"at byte {exc.start}") from None
    try:  # accepts NaN, Infinity, -Infinity as Airflow 2 writes them
        return json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise XcomValueError("invalid_json", f"at char {exc.pos}") from None
    except RecursionError:
        raise XcomValueError("too_deep", "nested too deeply to parse") from None


def unwrap(value: object) -> object:
    """Replace Airflow's `{"__classname__", "__version__", "__data__"}` by its data.

    Tuples and sets become lists, a datetime becomes `{"timestamp": ..., "tz": [...]}`,
    a dataclass its fields; wrappers nested anywhere are removed too.
    """
    if isinstance(value, dict):
        if _is_wrapper(value):
            return unwrap(value["__data__"])
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap(item) for item in value]
    return value


def _is_wrapper(value: dict[object, object]) -> bool:
    return ("__data__" in value and isinstance(value.get("__classname__"), str)
            and value.keys() <= _WRAPPER_KEYS)


def extract(value: object, path: Sequence[str | int]) -> object:
    """The part of a decoded value a metric's path points at (an empty path: all of it)."""
    current = value
    for depth, step in enumerate(path):
        if isinstance(step, int) and not isinstance(step, bool):
            if isinstance(current, list) and 0 <= step < len(current):
                current = current[step]
                continue
        elif isinstance(current, dict) and step in current:
            current = current[step]
            continue
        raise XcomValueError("path_not_found", f"step {depth + 1} ({step!r}) of the path "
                                               f"finds {_kind(current)}")
    return current


def to_number(value: object) -> float:
    """A sample value from a decoded XCom.

    bool -> 0.0/1.0; int and float as they are. Strings are accepted when, after
    stripping whitespace, they are a plain decimal number ("42", "-3.5", "1e3"), because
    templated and stringified values often arrive as text; "nan"/"inf"/"infinity" (any
    case or sign) give `not_finite`, any other string `not_numeric`. NaN, ±Infinity and
    ints too large for a float give `not_finite`; None, lists and dicts `not_numeric`.
    """
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int):
        try:
            number = float(value)
        except OverflowError:
            raise XcomValueError("not_finite", "integer too large") from None
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if _NON_FINITE.fullmatch(text):
            raise XcomValueError("not_finite", "a string naming a non-finite number")
        if not _NUMBER.fullmatch(text):
            raise XcomValueError("not_numeric", "a string that is not a number")
        number = float(text)
    else:
        raise XcomValueError("not_numeric", _kind(value))
    if not math.isfinite(number):
        raise XcomValueError("not_finite", str(number))
    return number


def to_label(value: object, max_length: int = 128) -> str:
    """A label value from a decoded XCom, for counters that count each distinct value.

    A string is stripped and must be non-empty, at most `max_length` characters and
    encodable as UTF-8 (JSON can carry lone surrogates, which would break exposition);
    bool -> "true"/"false"; int -> its decimal digits. Floats, None, lists and dicts give
    `not_a_string`, as does any string or int that breaks the rules above, so an
    unbounded or unprintable value never becomes a series.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            text = str(value)
        except ValueError:  # more digits than Python converts
            raise XcomValueError("not_a_string", "integer too long") from None
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise XcomValueError("not_a_string", _kind(value))
    if not text:
        raise XcomValueError("not_a_string", "empty string")
    if len(text) > max_length:
        raise XcomValueError("not_a_string", f"longer than {max_length} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise XcomValueError("not_a_string", "not encodable as UTF-8") from None
    return text


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__

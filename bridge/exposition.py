"""Both exposition formats, plain and gzipped, rendered once per refresh and fast.

prometheus_client's encoders run a generic path per sample and per format, which at
10,000 series took most of a refresh. `Encoder` writes the same bytes (tests compare
them with prometheus_client's byte for byte) and does less work:

- a family equal to the one of the same name rendered last time keeps its bytes, plain
  and compressed; in one that changed, a sample equal to the one at its position last
  time keeps its line (comparing costs about half of formatting);
- lines are built a column at a time with C-level map/zip/join over the samples that
  share a name and label names (a counter's all, a histogram's per bucket position),
  not sample by sample; label values are escaped only where they need it, and values
  come from a memo of those written last time (Go's float formatting is repr's but for
  infinities, NaN and large values);
- the sample lines are the same in both formats, so a family's body is built, encoded
  and compressed once; only its HELP/TYPE lines differ between the formats.

A gzip body is one gzip member made of raw deflate pieces, each byte-aligned and not
final (a family's HELP/TYPE lines stored, its body compressed 128 lines at a time), then
an empty final block: a valid stream that any gzip reader decodes to exactly the plain
bytes, in which a piece whose lines did not change is not compressed again. (The bytes
are not those of `gzip.compress` of the whole, which also stamps the current time; they
decode to the same.)

A family whose shape the fast path does not cover (timestamps, exemplars, native
histograms, `_created`/`_gsum`/`_gcount` samples, names outside the legacy character
set, label values that are not strings, values that are not numbers) is rendered by
prometheus_client itself, one family at a time, and kept the same way; so its errors
are prometheus_client's too.
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import eq, is_, itemgetter, not_
from typing import Any

from prometheus_client import generate_latest as text_generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["Encoder", "Rendered"]

_EOF = b"# EOF\n"
# A gzip member header (RFC 1952): deflate, no flags, no mtime, fastest, unknown OS.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
_FINAL_BLOCK = b"\x03\x00"  # an empty final block with fixed Huffman codes
_LEVEL = 1  # as the collector compressed before: ~3 ms a MB, 16x smaller
# An 8 KiB window instead of 32 KiB: as small and faster for pieces this size (a whole
# chunk fits in it or nearly), and any inflater reads it (raw deflate names no window).
_WINDOW_BITS = 13
# Lines per piece of a family's body compressed on its own: a piece without a changed
# line is not compressed again. 128 lines cost ~6% in size over one stream, no time.
_CHUNK = 128
# Names both formats write unchanged: prometheus_client's OpenMetrics encoder rewrites a
# ':' in sample names to '_', and both rewrite names outside the legacy set.
_PLAIN_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_FAMILY_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_TEXT_TYPE = {"counter": "counter", "gauge": "gauge", "histogram": "histogram",
              "summary": "summary", "info": "gauge", "stateset": "gauge",
              "gaugehistogram": "histogram", "unknown": "untyped"}
_TEXT_SUFFIX = {"counter": "_total", "info": "_info"}
_MOVED_SUFFIXES = ("_created", "_gsum", "_gcount")  # the text format moves these samples
_MEMO_LIMIT = 100_000  # entries kept per memo before it starts over
_COLUMNS = (itemgetter(0), itemgetter(1), _VALUE := itemgetter(2))  # name, labels, value
_EXTRAS = (itemgetter(3), itemgetter(4), itemgetter(5))  # timestamp, exemplar, native
_float_to_go: Callable[[Any], str] = floatToGoString
_text_latest: Callable[[Collector], bytes] = text_generate_latest
_om_latest: Callable[[Collector], bytes] = om_generate_latest
_NEWLINES = repeat("\n")
# Errors of the fast path on input it does not cover; prometheus_client then renders the
# family, and raises its own error if it has one.
_NOT_COVERED = (TypeError, ValueError, AttributeError, KeyError, OverflowError)

Meta = tuple[str, str, str, str]  # a family's name, type, HELP and unit
Kind = tuple[str, tuple[str, ...]]  # a sample's name and label names


@dataclass(frozen=True)
class Rendered:
    """One refresh's exposition: each format plain and gzipped."""

    text: bytes  # text/plain; version=0.0.4
    openmetrics: bytes  # application/openmetrics-text; version=1.0.0
    text_gzip: bytes
    openmetrics_gzip: bytes
    delegated: tuple[str, ...] = ()  # families prometheus_client rendered, by name


class _Unsupported(Exception):
    """The fast path does not cover this family; prometheus_client renders it."""


class _Mixed(Exception):
    """Samples taken for one group do not share their label names."""


class _Escaped(dict[str, str]):
    """Label values escaped as both formats escape them, computed once per value."""

    def __missing__(self, value: str) -> str:
        if len(self) >= _MEMO_LIMIT:
            self.clear()
        escaped = value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        self[value] = escaped
        return escaped


@dataclass(frozen=True)
class _Template:
    """How the samples of one name and label names are written."""

    pieces: tuple[str, ...]  # the text around the label values: 'name{a="', '",b="', '"} '
    label_names: tuple[str, ...]  # in the order written: sorted


@dataclass(frozen=True)
class _Header:
    """A family's first lines in each format, plain and compressed."""

    text: bytes
    openmetrics: bytes
    text_gzip: bytes
    openmetrics_gzip: bytes


class _Part:
    """One family's exposition, kept until the next render to reuse what is unchanged."""

    __slots__ = ("chunks", "covered", "header", "lines", "meta", "samples", "zeros",
                 "zipped")

    def __init__(self, meta: Meta, samples: list[Sample], header: _Header, lines: list[str],
                 chunks: list[bytes], zipped: list[bytes], zeros: list[int],
                 covered: bool = True) -> None:
        self.meta = meta
        self.samples = samples
        self.lines = lines  # one per sample; none if prometheus_client rendered it
        # Equal samples can still differ in a zero's sign (0.0 == -0.0, '0.0' != '-0.0'):
        # where the value was zero (or falsy) it is compared again.
        self.zeros = zeros
        self.header = header
        self.chunks = chunks  # the sample lines, _CHUNK at a time, encoded
        self.zipped = zipped  # each chunk deflated
        self.covered = covered  # False: prometheus_client rendered it all, in `header`

    def same(self, meta: Meta, samples: list[Sample]) -> bool:
        if meta != self.meta or samples != self.samples:
            return False
        old = self.samples
        return all(_same_sign(samples[i].value, old[i].value) for i in self.zeros)


class Encoder:
    """Renders metric families exactly as prometheus_client's encoders do, reusing the
    work of the previous call for whatever did not change.

    One instance serves one sequence of refreshes; calls are serialized by a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[str, _Part] = {}
        self._templates: dict[tuple[str, str, tuple[str, ...]], _Template] = {}
        self._escaped = _Escaped()
        self._values: dict[Any, str] = {}

    def render(self, families: Iterable[Metric]) -> Rendered:
        """Both formats of `families`, in their order, plain and gzipped."""
        with self._lock:
            parts = [self._part(family) for family in families]
            self._parts = {p.meta[0]: p for p in parts}
        text = b"".join([b for p in parts for b in (p.header.text, *p.chunks)])
        openmetrics = b"".join(
            [*(b for p in parts for b in (p.header.openmetrics, *p.chunks)), _EOF])
        text_gzip = _gzip(text, [z for p in parts for z in (p.header.text_gzip, *p.zipped)])
        openmetrics_gzip = _gzip(openmetrics, [
            *(z for p in parts for z in (p.header.openmetrics_gzip, *p.zipped)), _EOF_GZIP])
        delegated = tuple(p.meta[0] for p in parts if not p.covered)
        return Rendered(text, openmetrics, text_gzip, openmetrics_gzip, delegated)

    def _part(self, family: Metric) -> _Part:
        meta: Meta = (family.name, family.type, family.documentation, family.unit)
        samples = list(family.samples)
        last = self._parts.get(family.name)
        if last is not None and last.same(meta, samples):
            return last
        previous = last if last is not None and last.covered else None
        try:
            header = previous.header if previous is not None and previous.meta == meta \
                else _header(*meta)
            if previous is None:
                lines, zeros = self._format(family.name, samples)
            else:
                lines, zeros = self._reformat(family.name, samples, previous)
        except (_Unsupported, *_NOT_COVERED):
            return _fallback(family, meta, samples)
        # Chunks that come out the same as last time are not compressed again.
        old_chunks = previous.chunks if previous is not None else []
        plain: list[bytes] = []
        zipped: list[bytes] = []
        for c, start in enumerate(range(0, len(lines), _CHUNK)):
            piece = "".join(lines[start:start + _CHUNK]).encode("utf-8")
            if c < len(old_chunks) and old_chunks[c] == piece:
                assert previous is not None
                piece = old_chunks[c]
                zipped.append(previous.zipped[c])
            else:
                zipped.append(_deflate(piece))
            plain.append(piece)
        return _Part(meta, samples, header, lines, plain, zipped, zeros)

    def _reformat(self, family: str, samples: list[Sample],
                  previous: _Part) -> tuple[list[str], list[int]]:
        """Like `_format`, keeping the line of each sample equal to the one at its
        position last time, unless most changed."""
        old = previous.samples
        n, kept = len(samples), min(len(samples), len(old))
        same = list(map(eq, samples, old))
        for i in previous.zeros:
            if i < kept and same[i] and not _same_sign(samples[i].value, old[i].value):
                same[i] = False
        changed = list(compress(range(kept), map(not_, same)))
        changed.extend(range(kept, n))
        if len(changed) * 2 > n:
            return self._format(family, samples)
        lines = previous.lines[:kept]
        lines.extend([""] * (n - kept))
        fresh, _ = self._format(family, [samples[i] for i in changed])
        for i, line in zip(changed, fresh, strict=True):
            lines[i] = line
        return lines, list(compress(range(n), map(not_, map(_VALUE, samples))))

    def _format(self, family: str, samples: list[Sample]) -> tuple[list[str], list[int]]:
        """The lines of `samples`, and where their values are zero (or falsy)."""
        n = len(samples)
        if not n:
            return [], []
        # Column by column: zip(*samples) would allocate an iterator per sample.
        if any(list(map(extra, samples)).count(None) != n for extra in _EXTRAS):
            raise _Unsupported
        names, labels, values = (list(map(column, samples)) for column in _COLUMNS)
        return self._lines(family, names, labels, values), \
            list(compress(range(n), map(not_, values)))

    def _lines(self, family: str, names: list[str], labels: list[dict[str, str]],
               values: list[Any]) -> list[str]:
        """Formatted a column at a time: samples of one name and label names (all of a
        counter's, each bucket bound of a histogram) together."""
        n = len(names)
        with contextlib.suppress(_Mixed):
            if names.count(names[0]) == n:
                return self._group(family, names[0], labels, values)
            # A series' names are a run of the first name (a histogram's buckets), then
            # others; the next series starts where the first name comes back.
            first = names[0]
            try:
                other = next(i for i in range(1, n) if names[i] != first)
                period = names.index(first, other)
            except ValueError:
                period = n
            if period < n and names[period:] == names[:-period]:
                # The same names per series, as for histograms: a group per position.
                lines = [""] * n
                for j in range(period):
                    lines[j::period] = self._group(family, names[j], labels[j::period],
                                                   values[j::period])
                return lines
        groups: dict[Kind, list[int]] = {}
        for i, kind in enumerate(zip(names, map(tuple, labels), strict=True)):
            groups.setdefault(kind, []).append(i)
        lines = [""] * n
        for (name, _), where in groups.items():
            formatted = self._group(family, name, [labels[i] for i in where],
                                    [values[i] for i in where])
            for i, line in zip(where, formatted, strict=True):
                lines[i] = line
        return lines

    def _group(self, family: str, name: str, labels: Sequence[dict[str, str]],
               values: Sequence[Any]) -> list[str]:
        """Lines of samples of one name; raises _Mixed unless they share label names."""
        label_names = tuple(labels[0])
        template = self._templates.get((family, name, label_names)) \
            or self._template(family, name, label_names)
        if list(map(len, labels)).count(len(label_names)) != len(labels):
            raise _Mixed
        # Same number of labels and each of the first sample's: the same label names.
        columns: list[Iterable[str]] = [repeat(template.pieces[0])]
        for label_name, piece in zip(template.label_names, template.pieces[1:], strict=True):
            try:
                column = list(map(itemgetter(label_name), labels))
            except KeyError:
                raise _Mixed from None
            joined = "".join(column)
            if "\\" in joined or '"' in joined or "\n" in joined:
                column = list(map(self._escaped.__getitem__, column))
            columns.append(column)
            columns.append(repeat(piece))
        columns.append(self._go(values))
        columns.append(_NEWLINES)
        return list(map("".join, zip(*columns, strict=False)))  # repeat() never ends

    def _go(self, values: Sequence[Any]) -> list[str]:
        """Values as prometheus_client writes them, from a memo of the values written
        before (never zeros, whose sign a dictionary key loses)."""
        memo = self._values
        known: list[str | None] = list(map(memo.get, values))
        missing = known.count(None)
        if not missing:
            return known  # type: ignore[return-value]  # no None in it
        if missing * 2 > len(known):
            formatted = _go(values)
            memo.update(zip(values, formatted, strict=True))
        else:
            where = list(compress(range(len(known)), map(is_, known, repeat(None))))
            for i in where:
                known[i] = _go_one(values[i])
            formatted = known  # type: ignore[assignment]  # no None left
            memo.update([(values[i], formatted[i]) for i in where])
        memo.pop(0, None)
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        return formatted

    def _template(self, family: str, name: str, label_names: tuple[str, ...]) -> _Template:
        if not _PLAIN_NAME.fullmatch(name) or name in {family + s for s in _MOVED_SUFFIXES}:
            raise _Unsupported
        if not all(_PLAIN_NAME.fullmatch(n) for n in label_names):
            raise _Unsupported
        ordered = tuple(sorted(label_names))
        if ordered:
            pieces = (f'{name}{{{ordered[0]}="',
                      *(f'",{n}="' for n in ordered[1:]), '"} ')
        else:
            pieces = (f"{name} ",)
        template = _Template(pieces, ordered)
        if len(self._templates) >= _MEMO_LIMIT:
            self._templates.clear()
        self._templates[(family, name, label_names)] = template
        return template


def _go(values: Sequence[Any]) -> list[str]:
    """Values as prometheus_client writes them (Go's formatting), mostly Python's repr:
    only infinities, NaN and positive values with more than six digits before the point
    are written otherwise, and those reprs are longer than 8 or contain an 'n'."""
    try:
        reprs = list(map(float.__repr__, values))
    except TypeError:  # not all floats
        return [_go_one(v) for v in values]
    if "n" in "".join(reprs) or max(map(len, reprs)) > 8:
        return [_go_one(v) if len(r) > 8 or "n" in r else r
                for v, r in zip(values, reprs, strict=True)]
    return reprs


def _go_one(value: Any) -> str:
    r = float.__repr__(value) if type(value) is float else "n"
    return r if len(r) < 9 and "n" not in r else _float_to_go(value)


def _header(name: str, kind: str, documentation: str, unit: str) -> _Header:
    if not _FAMILY_NAME.fullmatch(name) or kind not in _TEXT_TYPE:
        raise _Unsupported
    if unit and not _PLAIN_NAME.fullmatch(unit):
        raise _Unsupported
    text_name = name + _TEXT_SUFFIX.get(kind, "")
    text_help = documentation.replace("\\", r"\\").replace("\n", r"\n")
    text = f"# HELP {text_name} {text_help}\n# TYPE {text_name} {_TEXT_TYPE[kind]}\n"
    om_help = text_help.replace('"', r"\"")
    om = f"# HELP {name} {om_help}\n# TYPE {name} {kind}\n"
    if unit:
        om += f"# UNIT {name} {unit}\n"
    text_bytes, om_bytes = text.encode("utf-8"), om.encode("utf-8")
    return _Header(text_bytes, om_bytes, _small(text_bytes), _small(om_bytes))


def _fallback(family: Metric, meta: Meta, samples: list[Sample]) -> _Part:
    """The family as prometheus_client renders it, kept like any other."""
    one = _One(family)
    text = _text_latest(one)
    om = _om_latest(one)
    if not om.endswith(_EOF):
        raise AssertionError("OpenMetrics exposition without '# EOF'")
    om = om[:-len(_EOF)]
    zeros = list(compress(range(len(samples)), map(not_, map(_VALUE, samples))))
    return _Part(meta, samples, _Header(text, om, _deflate(text), _deflate(om)), [], [], [],
                 zeros, covered=False)


class _One(Collector):
    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


def _same_sign(new: Any, old: Any) -> bool:
    """For values already known equal: whether they are also written the same."""
    if new != 0:
        return True
    return math.copysign(1.0, new) == math.copysign(1.0, old)


def _small(data: bytes) -> bytes:
    """A family's HELP and TYPE lines, usually short: those compress poorly on their own
    and would cost a compressor each, so they are stored as they are."""
    return _stored(data) if len(data) < 1024 else _deflate(data)


def _stored(data: bytes) -> bytes:
    """`data` as stored (uncompressed) deflate blocks."""
    blocks = [data[i:i + 0xFFFF] for i in range(0, len(data), 0xFFFF)]
    return b"".join(b"\x00" + struct.pack("<HH", len(b), len(b) ^ 0xFFFF) + b for b in blocks)


def _deflate(data: bytes) -> bytes:
    """`data` as a raw deflate stream of its own, byte-aligned and not final, so that
    such streams concatenate into one."""
    if not data:
        return b""
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -_WINDOW_BITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _gzip(plain: bytes, deflated: Sequence[bytes]) -> bytes:
    """One gzip member of `plain`, given as the deflate streams of its consecutive parts."""
    trailer = struct.pack("<II", zlib.crc32(plain), len(plain) & 0xFFFFFFFF)
    return b"".join([_GZIP_HEADER, *deflated, _FINAL_BLOCK, trailer])


_EOF_GZIP = _stored(_EOF)

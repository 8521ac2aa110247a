"""The encoder against prometheus_client's encoders: the same bytes for every shape, from
cold and across refreshes that change families in every way; parsed back to the same
samples by prometheus_client's parsers; gzip bodies any gzip reader decodes."""

from __future__ import annotations

import gzip
import math
import random
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from bridge.collector import OPENMETRICS, Snapshot, View, build_families
from bridge.exposition import Encoder, Rendered
from bridge.health import Health
from bridge.metric import HistogramValue, Labels, Series
from tests.prometheus import require_binary, running_prometheus, wait_for

parse_text: Callable[[str], Iterable[Metric]] = text_string_to_metric_families
parse_openmetrics: Callable[[str], Iterable[Metric]] = \
    openmetrics_parser.text_string_to_metric_families
INF, NAN = float("inf"), float("nan")
VALUES: tuple[Any, ...] = (
    0.0, -0.0, 1.0, -1.0, 0.5, 0.1 + 0.2, 1e20, 1e21, 1e-20, 1e-7, 123456.0, 1234567.0,
    1000000.0, 12345678.9, -1234567.0, 99999999.0, 5e-324, 1.7976931348623157e308, NAN,
    INF, -INF, 3, 0, 10**6, 2**53 + 1, 1764680000.25)
LABEL_VALUES = (
    "", "etl", "success", 'say "hi"', "back\\slash", "line\nbreak", "\\n is not a newline",
    "trailing\\", '"', "é", "日本語", "🎉", "tab\there", "a,b=c}", "x" * 80)
HELPS = ("", "plain", 'quoted "word"', "back\\slash", "two\nlines", "unicode ✓",
         "trailing \\", "# not a comment", "Refreshed every 10s by airflow-metrics-bridge.")
LABEL_NAMES = ("dag_id", "task_id", "state", "pool", "a_1", "_x", "Z", "le_not")
BOUNDS = (0.005, 0.1, 1.0, 10.0, 60.0, 1e6, 1e7, 1e21)


class Families(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def reference(families: Sequence[Metric]) -> tuple[bytes, bytes]:
    """What prometheus_client renders, the way the collector asked for it."""
    text_encoder, _ = choose_encoder("")
    om_encoder, _ = choose_encoder(OPENMETRICS)
    return text_encoder(Families(families)), om_encoder(Families(families))


def assert_same(encoder: Encoder, families: Sequence[Metric],
                delegated: Sequence[str] = ()) -> Rendered:
    """Renders `families` as prometheus_client does, and only `delegated` by it."""
    rendered = encoder.render(families)
    assert rendered.delegated == tuple(delegated)
    text, openmetrics = reference(families)
    assert rendered.text == text
    assert rendered.openmetrics == openmetrics
    assert gzip.decompress(rendered.text_gzip) == text
    assert gzip.decompress(rendered.openmetrics_gzip) == openmetrics
    return rendered


# A family as data, so that a refresh can change it and build it anew, as the collector
# does: kind, name, HELP, label names, and the value of each label-value tuple.
@dataclass(frozen=True)
class Spec:
    kind: str
    name: str
    help: str
    label_names: tuple[str, ...]
    series: tuple[tuple[tuple[str, ...], Any], ...]


def build(spec: Spec) -> Metric:
    names = list(spec.label_names)
    family: Any
    if spec.kind == "counter":
        family = CounterMetricFamily(spec.name, spec.help, labels=names)
    elif spec.kind == "gauge":
        family = GaugeMetricFamily(spec.name, spec.help, labels=names)
    elif spec.kind == "unknown":
        family = UnknownMetricFamily(spec.name, spec.help, labels=names)
    elif spec.kind == "histogram":
        family = HistogramMetricFamily(spec.name, spec.help, labels=names)
    elif spec.kind == "summary":
        family = SummaryMetricFamily(spec.name, spec.help, labels=names)
    elif spec.kind == "info":
        family = InfoMetricFamily(spec.name, spec.help, labels=names)
    else:
        family = StateSetMetricFamily(spec.name, spec.help, labels=names)
    for values, value in spec.series:
        if spec.kind == "histogram":
            buckets, total = value
            family.add_metric(list(values), list(buckets), total)
        elif spec.kind == "summary":
            family.add_metric(list(values), value[0], value[1])
        elif spec.kind == "info":
            family.add_metric(list(values), {"detail": value})
        elif spec.kind == "stateset":
            family.add_metric(list(values), {"on": bool(value), "off": not value})
        else:
            family.add_metric(list(values), value)
    built: Metric = family
    return built


def le(bound: float) -> str:
    return "+Inf" if bound == INF else repr(bound)


def random_value(rng: random.Random, kind: str) -> Any:
    if kind == "histogram":
        bounds = sorted(rng.sample(BOUNDS, rng.randint(0, 4)))
        if rng.random() < 0.1:
            bounds.insert(0, -1.0)  # a negative bucket: prometheus_client drops sum, count
        counts, count = [], 0.0
        for bound in (*bounds, INF):
            count += rng.choice((0.0, 1.0, 3.0, 250.0))
            counts.append((le(bound), count))
        return tuple(counts), rng.choice((0.0, count * 1.5, 1234567.891, 0.1 + 0.2))
    if kind == "summary":
        return rng.randint(0, 10**7), rng.choice(VALUES)
    if kind == "info":
        return rng.choice(LABEL_VALUES)
    if kind == "stateset":
        return rng.random() < 0.5
    if rng.random() < 0.5:
        return rng.choice(VALUES)
    return rng.choice((float(rng.randint(0, 10**9)), rng.uniform(-1e3, 1e3),
                       rng.expovariate(1e-6), float(rng.randint(0, 99))))


def random_series(rng: random.Random, kind: str, label_names: tuple[str, ...],
                  n: int) -> tuple[tuple[tuple[str, ...], Any], ...]:
    seen: dict[tuple[str, ...], Any] = {}
    for i in range(n):
        labels = tuple(rng.choice(LABEL_VALUES) if rng.random() < 0.3 else f"{name}_{i}"
                       for name in label_names)
        seen[labels] = random_value(rng, kind)
    return tuple(seen.items())


KINDS = ("counter", "gauge", "unknown", "histogram", "summary", "info", "stateset")


def random_spec(rng: random.Random, name: str) -> Spec:
    kind = rng.choice(KINDS)
    label_names = tuple(rng.sample(LABEL_NAMES, rng.randint(0, 3)))
    if kind in ("info", "stateset"):
        label_names = tuple(n for n in label_names if n != "detail")
    if not label_names:  # one series at most without labels
        return Spec(kind, name, rng.choice(HELPS), (),
                    random_series(rng, kind, (), rng.randint(0, 1)))
    n = rng.choice((0, 1, 2, 5, 40, 300))
    return Spec(kind, name, rng.choice(HELPS), label_names,
                random_series(rng, kind, label_names, n))


def mutate(rng: random.Random, spec: Spec) -> Spec:
    """Another refresh of the same family: usually some values change; sometimes series
    come or go, HELP changes, or a zero changes its sign."""
    series = dict(spec.series)
    keys = list(series)
    roll = rng.random()
    if roll < 0.5 and keys:
        for key in rng.sample(keys, max(1, len(keys) // 20)):
            series[key] = random_value(rng, spec.kind)
    elif roll < 0.6 and keys:
        for key in keys:
            value = series[key]
            if isinstance(value, float) and value == 0:
                series[key] = -value
    elif roll < 0.7 and keys:
        del series[rng.choice(keys)]
    elif roll < 0.8 and spec.label_names:
        extra = random_series(rng, spec.kind, spec.label_names, 3)
        series.update((tuple(f"new_{v}" for v in k), v) for k, v in extra)
    elif roll < 0.85:
        return replace(spec, help=rng.choice(HELPS))
    return replace(spec, series=tuple(series.items()))


@pytest.mark.parametrize("seed", range(40))
def test_random_families_render_byte_for_byte(seed: int) -> None:
    rng = random.Random(seed)
    specs = [random_spec(rng, f"family_{i}") for i in range(rng.randint(0, 12))]
    assert_same(Encoder(), [build(s) for s in specs])


@pytest.mark.parametrize("seed", range(12))
def test_refreshes_that_change_families_render_byte_for_byte(seed: int) -> None:
    """One encoder over many refreshes: whatever it reuses must still be current."""
    rng = random.Random(1000 + seed)
    specs = [random_spec(rng, f"family_{i}") for i in range(8)]
    encoder = Encoder()
    for _ in range(25):
        assert_same(encoder, [build(s) for s in specs])
        specs = [mutate(rng, s) if rng.random() < 0.5 else s for s in specs]
        roll = rng.random()
        if roll < 0.1:
            fresh = random_spec(rng, f"new_{rng.randrange(10**6)}")
            specs.insert(rng.randint(0, len(specs)), fresh)
        elif roll < 0.2 and specs:
            specs.pop(rng.randrange(len(specs)))
        elif roll < 0.3:
            rng.shuffle(specs)
        elif roll < 0.35 and specs:  # the same name, now another type
            victim = rng.randrange(len(specs))
            specs[victim] = replace(random_spec(rng, specs[victim].name))


def test_large_family_changing_a_few_series_at_a_time() -> None:
    """More than one compressed chunk: changed chunks recompressed, the rest kept."""
    labels = ("dag_id", "state", "task_id")
    series = {(f"dag_{i // 100}", "success", f"task_{i}"): float(i) for i in range(1000)}
    spec = Spec("counter", "airflow_task_instance_finished", "Finished.", labels,
                tuple(series.items()))
    encoder = Encoder()
    first = assert_same(encoder, [build(spec)])
    series[("dag_3", "success", "task_300")] = -0.0
    series[("dag_9", "success", "task_999")] = NAN
    spec = replace(spec, series=tuple(series.items()))
    second = assert_same(encoder, [build(spec)])
    assert second.text.count(b"\n") == first.text.count(b"\n")
    del series[("dag_0", "success", "task_0")]  # every later line moves up one
    assert_same(encoder, [build(replace(spec, series=tuple(series.items())))])


def test_special_values_and_escapes_exactly() -> None:
    family = GaugeMetricFamily("g", 'HELP with "quotes", a \\ and a\nnewline',
                               labels=["path", "z"])
    for i, value in enumerate((1e20, -0.0, NAN, INF, -INF, 1234567.0, 3, 10**6, 0.1 + 0.2)):
        family.add_metric([f'C:\\dir\\"{i}"\nnext', "é"], value)
    rendered = assert_same(Encoder(), [family])
    lines = rendered.openmetrics.decode().splitlines()
    assert lines[0] == r'# HELP g HELP with \"quotes\", a \\ and a\nnewline'
    assert rendered.text.decode().splitlines()[0] == \
        r'# HELP g HELP with "quotes", a \\ and a\nnewline'
    assert [line.rsplit(" ", 1)[1] for line in lines[2:-1]] == [
        "1e+20", "-0.0", "NaN", "+Inf", "-Inf", "1.234567e+06", "3.0", "1e+06",
        "0.30000000000000004"]
    assert lines[2].startswith(r'g{path="C:\\dir\\\"0\"\nnext",z="é"} ')


def test_empty_inputs() -> None:
    nothing = assert_same(Encoder(), [])
    assert (nothing.text, nothing.openmetrics) == (b"", b"# EOF\n")
    empty = [CounterMetricFamily("c", "no series yet", labels=["a"]),
             HistogramMetricFamily("h", "", labels=[]), GaugeMetricFamily("g", "x")]
    assert assert_same(Encoder(), empty).text == (
        b"# HELP c_total no series yet\n# TYPE c_total counter\n"
        b"# HELP h \n# TYPE h histogram\n# HELP g x\n# TYPE g gauge\n")


def test_long_help_and_large_families_compress() -> None:
    """HELP longer than a stored deflate block holds; bodies of many chunks."""
    family = GaugeMetricFamily("g", "long " * 30_000, labels=["i"])
    for i in range(2000):
        family.add_metric([str(i)], float(i % 7))
    rendered = assert_same(Encoder(), [family])
    assert len(rendered.text_gzip) < len(rendered.text) // 10


def test_shapes_prometheus_client_renders_itself() -> None:
    """Created timestamps, gauge histograms, timestamps, exemplars, names outside the
    legacy set: rendered by prometheus_client, cached like the rest. (A unit is not.)"""
    created = CounterMetricFamily("jobs", "with created", labels=["a"])
    created.add_metric(["x"], 3.0, created=1700000000.5)
    gauge_histogram = GaugeHistogramMetricFamily("gh", "gauge histogram", labels=["a"])
    gauge_histogram.add_metric(["x"], [("1.0", 2.0), ("+Inf", 3.0)], 7.0)
    stamped = GaugeMetricFamily("stamped", "with timestamps", labels=["a"])
    stamped.add_metric(["x"], 1.0, timestamp=1700000000.123)
    exemplar = HistogramMetricFamily("ex", "with exemplars", labels=["a"])
    exemplar.add_metric(["x"], [("1.0", 1.0, Exemplar({"trace_id": "abc"}, 0.5)),
                                ("+Inf", 1.0)], 0.5)
    unit = GaugeMetricFamily("duration_seconds", "with a unit", unit="seconds")
    unit.add_metric([], 1.5)
    colon = GaugeMetricFamily("ns:ratio", "a recording-rule name", labels=["a"])
    colon.add_metric(["x"], 0.25)
    dotted = GaugeMetricFamily("dotted.name", "a UTF-8 name", labels=["label.name", "b-c"])
    dotted.add_metric(["x", "y"], 2.0)
    plain = GaugeMetricFamily("plain", "the fast path next to them", labels=["a"])
    plain.add_metric(["x"], 2.0)
    families: list[Metric] = [created, gauge_histogram, stamped, exemplar, unit, colon,
                              dotted, plain]
    encoder = Encoder()
    delegated = [f.name for f in families if f not in (unit, plain)]
    rendered = assert_same(encoder, families, delegated)
    assert b"# HELP jobs_created with created\n# TYPE jobs_created gauge\n" in rendered.text
    assert b"ns_ratio{a=\"x\"} 0.25\n" in rendered.openmetrics
    assert b"ns:ratio{a=\"x\"} 0.25\n" in rendered.text
    assert_same(encoder, list(reversed(families)), list(reversed(delegated)))
    assert_same(encoder, families, delegated)
    unstamped = GaugeMetricFamily("stamped", "with timestamps", labels=["a"])
    unstamped.add_metric(["x"], 1.0)  # the same family, now for the fast path
    assert_same(encoder, [unstamped])
    assert_same(encoder, [stamped], ["stamped"])


def test_sample_names_in_any_order() -> None:
    """Sample names that repeat with a period (as a histogram's do) and ones that do not:
    each line keeps its own name and labels."""
    periodic = Metric("p", "periodic", "unknown")
    irregular = Metric("q", "irregular", "unknown")
    for i in range(6):
        for suffix in ("_a", "_b", "_c"):
            periodic.add_sample("p" + suffix, {"i": str(i)}, float(i))
    for i, suffix in enumerate(("_a", "_b", "_a", "_a", "_b", "_a", "_b", "_b")):
        irregular.add_sample("q" + suffix, {"i": str(i), "k": "v"} if i % 3 else
                             {"k": "v", "i": str(i)}, float(i))
    mixed = Metric("r", "one name, other label names", "unknown")
    mixed.add_sample("r", {"i": "0", "k": "v"}, 0.0)
    mixed.add_sample("r", {"i": "1", "k": "v", "extra": "x"}, 1.0)
    mixed.add_sample("r", {"other": "labels"}, 2.0)
    mixed.add_sample("r", {"k": "v", "i": "3"}, 3.0)
    extra = Metric("s", "a label more", "unknown")
    extra.add_sample("s", {"i": "0"}, 0.0)
    extra.add_sample("s", {"i": "1", "more": "x"}, 1.0)
    assert assert_same(Encoder(), [extra]).text.endswith(
        b's{i="0"} 0.0\ns{i="1",more="x"} 1.0\n')
    lines = assert_same(Encoder(), [periodic, irregular, mixed]).text.decode().splitlines()
    assert lines[-14:-6] == [
        'q_a{i="0",k="v"} 0.0', 'q_b{i="1",k="v"} 1.0', 'q_a{i="2",k="v"} 2.0',
        'q_a{i="3",k="v"} 3.0', 'q_b{i="4",k="v"} 4.0', 'q_a{i="5",k="v"} 5.0',
        'q_b{i="6",k="v"} 6.0', 'q_b{i="7",k="v"} 7.0']
    assert lines[-4:] == ['r{i="0",k="v"} 0.0', 'r{extra="x",i="1",k="v"} 1.0',
                          'r{other="labels"} 2.0', 'r{i="3",k="v"} 3.0']


def test_errors_are_prometheus_clients() -> None:
    """Input that prometheus_client cannot render fails here the same way."""
    family = GaugeMetricFamily("g", "label value not a string", labels=["a"])
    family.add_metric([5], 1.0)  # type: ignore[list-item]
    with pytest.raises(AttributeError) as ours:
        Encoder().render([family])
    with pytest.raises(AttributeError) as theirs:
        generate_latest(Families([family]))
    assert str(ours.value) == str(theirs.value)
    huge = GaugeMetricFamily("g", "value too large for a float")
    huge.add_metric([], 10**400)
    with pytest.raises(OverflowError):
        Encoder().render([huge])


def snapshot(dags: int, tasks: int, finished: float) -> Snapshot:
    """A bridge snapshot: per-task counters and histograms, per-DAG gauges."""
    counters: dict[Labels, float | HistogramValue] = {}
    durations: dict[Labels, float | HistogramValue] = {}
    for d in range(dags):
        for t in range(tasks):
            labels = (("dag_id", f"dag_{d}"), ("state", "success"), ("task_id", f"t{t}"))
            counters[labels] = finished + d + t
            durations[labels] = HistogramValue(
                ((10.0, 1.0), (60.0, 2.0 + t), (INF, finished + t)), 61.5 * t, finished + t)
    runs: dict[Labels, float | HistogramValue] = {
        (("dag_id", f"dag_{d}"), ("state", "running")): float(d % 3) for d in range(dags)}
    series: dict[str, Series] = {"airflow_task_instance_finished_total": counters,
              "airflow_task_instance_duration_seconds": durations,
              "airflow_dag_runs": runs}
    return Snapshot(series, Health(version="1.0", metadb_up=True))


def test_bridge_families_across_refreshes() -> None:
    """The families the collector builds, refresh after refresh."""
    view = View(10, task_id_label=True, max_series=100_000)
    encoder = Encoder()
    for finished in (1.0, 1.0, 2.0, 0.0, 5.0):
        families, _ = build_families(snapshot(12, 15, finished), view)
        assert_same(encoder, families)
    families, _ = build_families(snapshot(13, 14, 5.0), view)  # a DAG more, a task less
    assert_same(encoder, families)


def valid_spec(rng: random.Random, name: str) -> Spec:
    """A family both parsers accept: counters and summaries not negative or NaN, no
    negative histogram buckets."""
    spec = random_spec(rng, name)
    series = spec.series
    if spec.kind == "counter":
        series = tuple((k, abs(float(v))) for k, v in series if not math.isnan(v))
    elif spec.kind == "summary":
        series = tuple((k, (v[0], abs(v[1]))) for k, v in series if not math.isnan(v[1]))
    elif spec.kind == "histogram":
        series = tuple((k, v) for k, v in series if not v[0][0][0].startswith("-"))
    return replace(spec, series=series)


def samples_of(families: Sequence[Metric]) -> list[tuple[str, dict[str, str], str]]:
    """Every sample with its value written exactly (NaN, the sign of zero)."""
    return [(s.name, dict(s.labels), repr(float(s.value)))
            for f in families for s in f.samples]


@pytest.mark.parametrize("seed", range(20))
def test_both_formats_parse_back_to_the_samples(seed: int) -> None:
    rng = random.Random(2000 + seed)
    families = [build(valid_spec(rng, f"family_{i}")) for i in range(8)]
    rendered = Encoder().render(families)
    assert rendered.delegated == ()
    expected = samples_of(families)
    assert samples_of(list(parse_text(rendered.text.decode()))) == expected
    parsed = list(parse_openmetrics(rendered.openmetrics.decode()))
    assert samples_of(parsed) == expected
    assert [(f.name, f.type, f.documentation) for f in parsed if f.samples] == \
        [(f.name, f.type, f.documentation) for f in families if f.samples]


def test_gzip_is_one_member_that_gzip_decodes(tmp_path: Path) -> None:
    rng = random.Random(7)
    families = [build(random_spec(rng, f"family_{i}")) for i in range(30)]
    rendered = assert_same(Encoder(), families)
    for plain, zipped in ((rendered.text, rendered.text_gzip),
                          (rendered.openmetrics, rendered.openmetrics_gzip)):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)  # exactly one gzip member
        assert decoder.decompress(zipped) == plain
        assert decoder.eof and decoder.unused_data == b""
        # Not much larger than compressing the whole at once.
        assert len(zipped) < len(gzip.compress(plain, compresslevel=1)) * 1.15 + 300
        path = tmp_path / "body.gz"
        path.write_bytes(zipped)
        tool = require_binary("gzip", "gzip")
        assert subprocess.run([tool, "-t", str(path)], capture_output=True).returncode == 0
        assert subprocess.run([tool, "-dc", str(path)], capture_output=True,
                              check=True).stdout == plain


def test_prometheus_scrapes_both_formats_plain_and_gzipped(tmp_path: Path) -> None:
    """A real Prometheus reads every sample of each body, gzip included."""
    families, _ = build_families(snapshot(4, 5, 3.0),
                                 View(10, max_series=1000, task_duration_buckets_dags=("*",)))
    tricky = GaugeMetricFamily("tricky", 'HELP "quoted" \\ and\nnewline', labels=["v"])
    for i, value in enumerate(('say "hi"', "back\\slash", "line\nbreak", "é日本")):
        tricky.add_metric([value], float(i) + 0.5)
    rendered = assert_same(Encoder(), [*families, tricky])
    text_type, om_type = choose_encoder("")[1], choose_encoder(OPENMETRICS)[1]
    bodies = {"/text": (rendered.text, text_type, False),
              "/text-gzip": (rendered.text_gzip, text_type, True),
              "/om": (rendered.openmetrics, om_type, False),
              "/om-gzip": (rendered.openmetrics_gzip, om_type, True)}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, content_type, zipped = bodies[self.path]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            if zipped:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    target = f"127.0.0.1:{server.server_address[1]}"
    jobs: list[dict[str, Any]] = [
        {"job_name": path.strip("/"), "metrics_path": path,
         "static_configs": [{"targets": [target]}]} for path in bodies]
    samples = sum(len(f.samples) for f in [*families, tricky])
    try:
        with running_prometheus(tmp_path / "prometheus", jobs) as prom:
            def scraped() -> bool:
                return all(prom.value(f'scrape_samples_scraped{{job="{job["job_name"]}"}}')
                           is not None for job in jobs)

            wait_for("every body scraped", scraped, context=prom.tail)
            for job in (j["job_name"] for j in jobs):
                assert prom.value(f'up{{job="{job}"}}') == 1, prom.targets()[job]
                assert prom.value(f'scrape_samples_scraped{{job="{job}"}}') == samples
                assert prom.value(f'tricky{{job="{job}",v="say \\"hi\\""}}') == 0.5
                assert prom.value(f'tricky{{job="{job}",v="back\\\\slash"}}') == 1.5
                assert prom.value(f'tricky{{job="{job}",v="line\\nbreak"}}') == 2.5
                assert prom.value(f'tricky{{job="{job}",v="é日本"}}') == 3.5
                assert prom.value(
                    f'airflow_task_instance_duration_by_task_seconds_bucket{{job="{job}",'
                    'dag_id="dag_3",task_id="t4",state="success",le="60.0"}') == 6
    finally:
        server.shutdown()
        server.server_close()

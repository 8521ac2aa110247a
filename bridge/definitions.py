"""Business metric definitions: the user's YAML file, validated into frozen values.

Pydantic checks the shape of each entry; the rules between keys (a counter ends in
`_total`, a gauge cannot count strings, entries sharing a name must agree) are checked by
hand so that every message names the file, the entry and the key, and says what to write.
All problems of a file are reported at once, one line each.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from bridge.errors import ConfigError
from bridge.yamlfile import read_yaml

BusinessKind = Literal["gauge", "counter"]  # a business metric is never a histogram
Source = Literal["xcom", "task_state"]
Mapped = Literal["sum", "last", "each"]
PathStep = str | int

DEFAULT_KEY = "return_value"
DEFAULT_STATE_LABEL = "state"
MAP_INDEX_LABEL = "map_index"
RESERVED_PREFIX = "airflow_"
RESERVED_LABELS = frozenset({"le", "quantile"})
COUNTER_SUFFIX = "_total"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_PATH_FIRST = re.compile(r"([^.\[\]\s]+)|\[([0-9]{1,9})\]")
_PATH_NEXT = re.compile(r"\.([^.\[\]\s]+)|\[([0-9]{1,9})\]")


@dataclass(frozen=True)
class MetricDefinition:
    """One business metric: where its value comes from and how runs combine into it."""

    name: str
    help: str
    kind: BusinessKind
    source: Source
    dag_id: str
    task_id: str
    key: str  # XCom key; "" for task_state
    path: tuple[PathStep, ...]  # into the XCom's JSON value; () for all of it
    labels: tuple[tuple[str, str], ...]  # static labels, sorted by name
    value_label: str | None
    mapped: Mapped

    @property
    def label_names(self) -> tuple[str, ...]:
        """Every label a series of this metric carries, in exposition order."""
        names = tuple(name for name, _ in self.labels)
        if self.value_label is not None:
            names += (self.value_label,)
        if self.mapped == "each":
            names += (MAP_INDEX_LABEL,)
        return names


class _EntryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    help: str
    type: BusinessKind
    source: Source = "xcom"
    dag_id: str
    task_id: str
    key: str | None = None
    path: str | None = None
    labels: dict[str, str] = {}
    value_label: str | None = None
    mapped: Mapped | None = None


_FIELDS = tuple(sorted(_EntryModel.model_fields))
_MISSING_HINTS = {
    "name": "name: bike_records_ingested_total",
    "help": "help: Records ingested by the fetch task.",
    "type": "type: gauge",
    "dag_id": "dag_id: daily_fetch_bike_data",
    "task_id": "task_id: fetch_bike_data",
}


class _Problems:
    """Located error lines of one file, in the order they were found."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: list[str] = []

    def add(self, index: int, name: str | None, key: str, message: str) -> None:
        entry = f"metrics[{index}]" + (f" ({name})" if name else "")
        self.lines.append(f"{self.file}: {entry}{'.' + key if key else ''}: {message}")


def parse_path(text: str) -> tuple[PathStep, ...]:
    """`a.b[2].c` -> ("a", "b", 2, "c"); raises ValueError on anything else."""
    steps: list[PathStep] = []
    pattern, pos = _PATH_FIRST, 0
    while pos < len(text):
        match = pattern.match(text, pos)
        if match is None:
            raise ValueError(f"{text!r} is not a valid path")
        name, index = match.groups()
        steps.append(name if name is not None else int(index))
        pattern, pos = _PATH_NEXT, match.end()
    if not steps:
        raise ValueError("the path is empty")
    return tuple(steps)


def format_path(path: Sequence[PathStep]) -> str:
    """The written form of a parsed path, for messages."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


def load_definitions(path: str | os.PathLike[str],
                     reserved: Collection[str]) -> tuple[MetricDefinition, ...]:
    """Read and check a metrics file; `reserved` are the bridge's built-in metric names."""
    file = str(path)
    problems = _Problems(file)
    found: list[tuple[int, MetricDefinition]] = []
    for index, raw in enumerate(_read_entries(file)):
        definition = _entry(raw, index, reserved, problems)
        if definition is not None:
            found.append((index, definition))
    _check_shared_names(found, problems)
    if problems.lines:
        raise ConfigError("\n".join(problems.lines))
    return tuple(definition for _, definition in found)


def _read_entries(file: str) -> list[object]:
    data = read_yaml(file, "metrics file")
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping with one key, `metrics:`, "
                          "holding a list of metric definitions")
    unknown = sorted(str(key) for key in data if key != "metrics")
    if unknown:
        raise ConfigError(f"{file}: {unknown[0]}: unknown key; the file holds one key, "
                          "`metrics:`, a list of metric definitions")
    entries = data.get("metrics")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ConfigError(f"{file}: metrics: must be a list of metric definitions, each "
                          "starting with `- name: ...`")
    return entries


def _entry(raw: object, index: int, reserved: Collection[str],
           problems: _Problems) -> MetricDefinition | None:
    if not isinstance(raw, dict):
        problems.add(index, None, "", "each entry must be a mapping with name, help, type, "
                     "dag_id and task_id, not " + _describe_input(raw))
        return None
    name = raw.get("name") if isinstance(raw.get("name"), str) else None
    try:
        model = _EntryModel.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            problems.add(index, name, key, _pydantic_message(error))
        return None
    found = list(_entry_problems(model, reserved))
    for key, message in found:
        problems.add(index, model.name, key, message)
    return None if found else _definition(model)


def _pydantic_message(error: ErrorDetails) -> str:
    key = str(error["loc"][-1]) if error["loc"] else ""
    kind = error["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(key, _FIELDS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"unknown key; {hint}known keys: {', '.join(_FIELDS)}"
    if kind == "missing":
        example = _MISSING_HINTS.get(key, f"{key}: ...")
        return f"required; add it, e.g. `{example}`"
    if kind == "literal_error":
        expected = (error.get("ctx") or {}).get("expected", "")
        return f"write {expected}, not {_describe_input(error['input'])}"
    if kind == "string_type":
        return f"must be a string, not {_describe_input(error['input'])}; quote it if needed"
    if kind == "dict_type":
        return (f"must be a mapping of label names to values, e.g. `labels: {{pipeline: bike}}`,"
                f" not {_describe_input(error['input'])}")
    return str(error["msg"])


def _describe_input(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _entry_problems(model: _EntryModel, reserved: Collection[str]) -> Iterator[tuple[str, str]]:
    yield from _name_problems(model.name, model.type, reserved)
    if not model.help.strip():
        yield "help", "must not be empty; say what the number means and its unit"
    for key in ("dag_id", "task_id"):
        if not getattr(model, key).strip():
            yield key, f"must not be empty; write the {key} as Airflow shows it"
    yield from _source_problems(model)
    yield from _label_problems(model)


def _name_problems(name: str, kind: BusinessKind,
                   reserved: Collection[str]) -> Iterator[tuple[str, str]]:
    if not _METRIC_NAME.fullmatch(name):
        fixed = re.sub(r"[^a-zA-Z0-9_:]", "_", name.strip())
        fixed = fixed if _METRIC_NAME.fullmatch(fixed) else "_" + fixed
        yield "name", (f"{name!r} is not a valid Prometheus metric name; use letters, digits, "
                       f"_ and : only, not starting with a digit, e.g. {fixed}")
        return
    if name.startswith(RESERVED_PREFIX):
        yield "name", (f"names starting with {RESERVED_PREFIX} are reserved for the bridge's "
                       "own metrics; start it with a prefix of your own, e.g. "
                       f"{'mypipeline_' + name.removeprefix(RESERVED_PREFIX)}")
        return
    if name in reserved:
        yield "name", f"{name} is a built-in metric of the bridge; choose another name"
        return
    if kind == "counter" and not name.endswith(COUNTER_SUFFIX):
        yield "name", f"a counter's name must end in {COUNTER_SUFFIX}; write {name}_total"
    if kind == "gauge" and name.endswith(COUNTER_SUFFIX):
        yield "name", (f"a gauge's name must not end in {COUNTER_SUFFIX}, which marks counters; "
                       f"write {name.removesuffix(COUNTER_SUFFIX)} or use type: counter")


def _source_problems(model: _EntryModel) -> Iterator[tuple[str, str]]:
    if model.source == "task_state":
        if model.type == "gauge":
            yield "type", ("a task_state metric counts the task's terminal states, so it is a "
                           "counter; write type: counter and a name ending in _total")
        for key in ("key", "path"):
            if getattr(model, key) is not None:
                yield key, f"a task_state metric reads no XCom; remove {key}"
        return
    if model.type == "gauge" and model.value_label is not None:
        yield "type", ("a gauge cannot take string values (value_label); use type: counter "
                       "to count each distinct value")
    if model.key is not None and not model.key.strip():
        yield "key", f"must not be empty; leave key out to read {DEFAULT_KEY}"
    if model.path is not None:
        try:
            parse_path(model.path)
        except ValueError:
            yield "path", (f"{model.path!r} is not a valid path; write keys separated by dots, "
                           "with list indexes in brackets, e.g. metrics.r2, scores[0] or "
                           "a.b[2].c (leave path out to take the whole value)")


def _label_problems(model: _EntryModel) -> Iterator[tuple[str, str]]:
    value_label = _value_label(model)
    each = _mapped(model) == "each"
    for name in sorted(model.labels):
        problem = _label_name_problem(name, each)
        if problem is None and name == value_label:
            problem = (f"{name} is also the value_label; remove it from labels or choose "
                       "another value_label")
        if problem is None and not model.labels[name]:
            problem = "an empty value drops the label in Prometheus; give it a value"
        if problem is not None:
            yield f"labels.{name}", problem
    if value_label is not None:
        problem = _label_name_problem(value_label, each)
        if problem is not None:
            yield "value_label", problem


def _label_name_problem(name: str, each: bool) -> str | None:
    if not _LABEL_NAME.fullmatch(name):
        return (f"{name!r} is not a valid label name; use letters, digits and _ only, "
                "not starting with a digit")
    if name.startswith("__"):
        return f"{name}: label names starting with __ are reserved by Prometheus; rename it"
    if name in RESERVED_LABELS:
        return (f"{name} is reserved by Prometheus for histograms and summaries; "
                "choose another label name")
    if each and name == MAP_INDEX_LABEL:
        return f"{MAP_INDEX_LABEL} is added by `mapped: each`; choose another label name"
    return None


def _value_label(model: _EntryModel) -> str | None:
    if model.source == "task_state" and model.value_label is None:
        return DEFAULT_STATE_LABEL
    return model.value_label


def _mapped(model: _EntryModel) -> Mapped:
    if model.mapped is not None:
        return model.mapped
    return "sum" if model.type == "counter" else "last"


def _definition(model: _EntryModel) -> MetricDefinition:
    xcom = model.source == "xcom"
    return MetricDefinition(
        name=model.name,
        help=model.help.strip(),
        kind=model.type,
        source=model.source,
        dag_id=model.dag_id,
        task_id=model.task_id,
        key=(model.key or DEFAULT_KEY) if xcom else "",
        path=parse_path(model.path) if xcom and model.path is not None else (),
        labels=tuple(sorted(model.labels.items())),
        value_label=_value_label(model),
        mapped=_mapped(model),
    )


def _family(definition: MetricDefinition) -> str:
    """The name the exposition groups samples under: a counter's drops `_total`."""
    if definition.kind == "counter":
        return definition.name.removesuffix(COUNTER_SUFFIX)
    return definition.name


def _check_shared_names(found: list[tuple[int, MetricDefinition]], problems: _Problems) -> None:
    """Entries may share a name (one metric fed by several DAGs) only if they agree."""
    first: dict[str, tuple[int, MetricDefinition]] = {}
    families: dict[str, tuple[int, MetricDefinition]] = {}
    seen_labels: dict[str, list[tuple[int, tuple[tuple[str, str], ...]]]] = {}
    for index, definition in found:
        name = definition.name
        family = families.setdefault(_family(definition), (index, definition))
        if family[1].name != name:
            problems.add(index, name, "name", (
                f"{name} and metrics[{family[0]}] ({family[1].name}) would share the metric "
                f"family {_family(definition)} (a counter's family drops _total); rename one"))
            continue
        if name not in first:
            first[name] = (index, definition)
            seen_labels[name] = [(index, definition.labels)]
            continue
        other_index, other = first[name]
        # The type needs no check: the _total rules make it follow from the name.
        agree = ("entries that share a name must have the same type, help and label names, "
                 "and differ in a static label value")
        if definition.help != other.help:
            problems.add(index, name, "help", f"differs from the help of metrics[{other_index}]"
                         f", which defines {name} too; {agree}")
        elif definition.label_names != other.label_names:
            problems.add(index, name, "labels", (
                f"metrics[{other_index}] gives {name} the labels "
                f"({', '.join(other.label_names)}), this entry "
                f"({', '.join(definition.label_names)}); {agree}"))
        else:
            same = [i for i, labels in seen_labels[name] if labels == definition.labels]
            if same:
                problems.add(index, name, "labels", (
                    f"same static labels as metrics[{same[0]}], so both would write the same "
                    "series; give each entry that shares this name its own label value, e.g. "
                    f"`labels: {{pipeline: {definition.dag_id}}}`"))
            seen_labels[name].append((index, definition.labels))

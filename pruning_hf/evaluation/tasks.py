"""Zero-shot tasks: Hub datasets through ``datasets``, or local JSONL files in a simple schema.

Task specs (API ``tasks=[...]``, CLI ``--tasks a,b``):

* a known name, read from the Hub: ``piqa``, ``arc_easy``, ``arc_challenge``, ``hellaswag``,
  ``boolq``, ``winogrande`` (multiple choice, prompts as in lm-evaluation-harness) and ``lambada``
  (last-word accuracy on LAMBADA-OpenAI);
* ``NAME=FILE.jsonl``: task ``NAME`` from a local file; ``FILE.jsonl``: the same, named after the file.

Local JSONL schema, one JSON object per line (all lines of a file of one kind):

* multiple choice: ``{"context": "Question: ...\\nAnswer:", "choices": ["...", "..."], "label": 0}``;
  each choice is scored as ``context + " " + choice``. Winogrande style (one continuation after
  several contexts): ``{"contexts": ["...", "..."], "continuation": "...", "label": 1}``.
* last word: ``{"text": "... the last word"}`` (the last space-separated word is the target), or
  ``{"context": "...", "target": "word"}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .loglikelihood import split_last_word

__all__ = ["TaskError", "Task", "TASKS", "load_task", "load_tasks", "parse_task_list", "task_names", "run_task",
           "MULTIPLE_CHOICE", "LAST_WORD", "TASK_SUFFIX"]

MULTIPLE_CHOICE = "multiple_choice"
LAST_WORD = "last_word"
#: a task's accuracy as a sweep / recipe / card metric is named ``<task>_acc`` (a fraction, higher is better)
TASK_SUFFIX = "_acc"


class TaskError(ValueError):
    """A task name, file or record is invalid, or the task cannot be fetched."""


@dataclass(frozen=True)
class HubTask:
    """Where a known task lives on the Hub and how one record becomes one example."""

    path: str
    config: str | None
    split: str
    kind: str
    convert: Callable[[dict], dict]
    revision: str | None = None


@dataclass
class Task:
    """A loaded task. ``examples`` follow the local schema, normalised: multiple choice
    ``{"contexts": [...], "choices": [...], "label": int}`` (one context per choice), last word
    ``{"context": str, "target": str}``."""

    name: str
    kind: str
    source: str
    examples: list[dict[str, Any]] = field(default_factory=list)


def _question(question: str, choices: list[str], label: int) -> dict:
    prompt = f"Question: {question}\nAnswer:"
    return {"contexts": [prompt] * len(choices), "choices": list(choices), "label": int(label)}


def _clean_hellaswag(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _hellaswag(record: dict) -> dict:
    query = _clean_hellaswag(f"{record['activity_label']}: {record['ctx_a']} {record['ctx_b'].capitalize()}")
    endings = [_clean_hellaswag(e) for e in record["endings"]]
    return {"contexts": [query] * len(endings), "choices": endings, "label": int(record["label"])}


def _arc(record: dict) -> dict:
    return _question(record["question"], record["choices"]["text"],
                     record["choices"]["label"].index(record["answerKey"]))


def _winogrande(record: dict) -> dict:
    blank = record["sentence"].index("_")
    target = record["sentence"][blank + 1:].strip()
    contexts = [record["sentence"][:blank] + option for option in (record["option1"], record["option2"])]
    return {"contexts": contexts, "choices": [target, target], "label": int(record["answer"]) - 1}


def _boolq(record: dict) -> dict:
    prompt = f"{record['passage']}\nQuestion: {record['question']}?\nAnswer:"
    return {"contexts": [prompt, prompt], "choices": ["no", "yes"], "label": int(bool(record["answer"]))}


def _lambada(record: dict) -> dict:
    context, target = split_last_word(record["text"])
    return {"context": context, "target": target}


TASKS: dict[str, HubTask] = {
    "piqa": HubTask("ybisk/piqa", "default", "validation", MULTIPLE_CHOICE,
                    lambda r: _question(r["goal"], [r["sol1"], r["sol2"]], r["label"]), "refs/convert/parquet"),
    "arc_easy": HubTask("allenai/ai2_arc", "ARC-Easy", "test", MULTIPLE_CHOICE, _arc),
    "arc_challenge": HubTask("allenai/ai2_arc", "ARC-Challenge", "test", MULTIPLE_CHOICE, _arc),
    "hellaswag": HubTask("Rowan/hellaswag", None, "validation", MULTIPLE_CHOICE, _hellaswag),
    "boolq": HubTask("google/boolq", None, "validation", MULTIPLE_CHOICE, _boolq),
    "winogrande": HubTask("allenai/winogrande", "winogrande_xl", "validation", MULTIPLE_CHOICE, _winogrande),
    "lambada": HubTask("EleutherAI/lambada_openai", "default", "test", LAST_WORD, _lambada),
}

_SCHEMA_HINT = ('one JSON object per line: {"context": str, "choices": [str, ...], "label": int} '
                'for multiple choice, or {"text": str} for last-word accuracy')


def _normalise(record: Any, where: str) -> tuple[str, dict]:
    """Validate one local record -> ``(kind, normalised example)``."""
    if not isinstance(record, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(record).__name__}; {_SCHEMA_HINT}")

    def strings(key: str) -> list[str]:
        value = record[key]
        if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, str) and v.strip() for v in value):
            raise TaskError(f"{where}: {key!r} must be a list of >= 2 non-empty strings, got {value!r}")
        return value

    def text(key: str) -> str:
        value = record[key]
        if not isinstance(value, str) or not value.strip():
            raise TaskError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
        return value

    if "choices" in record or "contexts" in record:
        if "choices" in record:
            choices = strings("choices")
            contexts = [text("context")] * len(choices) if "context" in record else None
            if contexts is None:
                raise TaskError(f"{where}: a multiple-choice record with 'choices' needs a 'context'")
        else:
            contexts = strings("contexts")
            choices = [text("continuation")] * len(contexts)
        label = record.get("label")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise TaskError(f"{where}: 'label' must be an integer index into the {len(choices)} choices, got {label!r}")
        return MULTIPLE_CHOICE, {"contexts": contexts, "choices": choices, "label": label}
    if "text" in record:
        try:
            context, target = split_last_word(text("text"))
        except ValueError as err:
            raise TaskError(f"{where}: {err}") from None
        return LAST_WORD, {"context": context, "target": target}
    if "target" in record:
        return LAST_WORD, {"context": text("context"), "target": text("target")}
    raise TaskError(f"{where}: no task fields (found keys {sorted(record)}); {_SCHEMA_HINT}")


def _load_local(name: str, path: Path, limit: int | None) -> Task:
    if not path.is_file():
        raise TaskError(f"task file {str(path)!r} for task {name!r} does not exist")
    kind, examples = None, []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskError(f"{where} is not valid JSON ({err.msg}); {_SCHEMA_HINT}") from None
        record_kind, example = _normalise(record, where)
        if kind is not None and record_kind != kind:
            raise TaskError(f"{where} is a {record_kind} record but earlier lines are {kind}; one kind per file")
        kind = record_kind
        examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise TaskError(f"task file {str(path)!r} holds no examples; {_SCHEMA_HINT}")
    return Task(name, kind, str(path), examples)


def _load_hub(name: str, spec: HubTask, limit: int | None) -> Task:
    import datasets

    split = spec.split if limit is None else f"{spec.split}[:{limit}]"
    source = f"{spec.path}{':' + spec.config if spec.config else ''}@{spec.split}"
    try:
        dataset = datasets.load_dataset(spec.path, spec.config, split=split, revision=spec.revision)
    except Exception as err:  # offline, missing, renamed: datasets raises many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        example = ('{"context": "...", "choices": ["...", "..."], "label": 0}' if spec.kind == MULTIPLE_CHOICE
                   else '{"text": "..."}')
        raise TaskError(f"cannot fetch task {name!r} from the Hub ({source}): {type(err).__name__}: {first}. "
                        f"Without network access use a local file: --tasks {name}=FILE.jsonl "
                        f"(Python: tasks=['{name}=FILE.jsonl']) with one {example} per line") from None
    try:
        examples = [spec.convert(record) for record in dataset]
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise TaskError(f"task {name!r}: a record of {source} has an unexpected layout "
                        f"({type(err).__name__}: {err}); the dataset may have changed on the Hub") from None
    if not examples:
        raise TaskError(f"task {name!r}: {source} holds no examples")
    return Task(name, spec.kind, f"hub:{source}", examples)


def _split_spec(spec: str) -> tuple[str, Path | None]:
    name, eq, file = spec.partition("=")
    if eq:
        if not name.strip() or not file.strip():
            raise TaskError(f"task {spec!r}: expected NAME=FILE.jsonl")
        return name.strip(), Path(file.strip()).expanduser()
    if spec.endswith(".jsonl") or "/" in spec:
        path = Path(spec).expanduser()
        return path.stem, path
    return spec, None


def parse_task_list(tasks: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"piqa,arc_easy"`` or a list -> validated list of task specs (names known or files given)."""
    if tasks is None:
        return []
    items = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    if not all(isinstance(t, str) for t in items):
        raise TaskError(f"tasks must be task names or NAME=FILE.jsonl strings, got {tasks!r}")
    items = [t.strip() for t in items if t.strip()]
    names = []
    for spec in items:
        name, path = _split_spec(spec)
        if path is None and name not in TASKS:
            raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}; or a local file "
                            f"NAME=FILE.jsonl ({_SCHEMA_HINT})")
        if path is not None and not path.is_file():
            raise TaskError(f"task file {str(path)!r} for task {name!r} does not exist")
        if name in names:
            raise TaskError(f"task {name!r} is listed twice")
        names.append(name)
    return items


def load_task(spec: str, limit: int | None = None) -> Task:
    """Load one task spec (see module docstring); ``limit`` keeps the first examples only."""
    name, path = _split_spec(parse_task_list([spec])[0])
    return _load_local(name, path, limit) if path is not None else _load_hub(name, TASKS[name], limit)


def load_tasks(specs: str | list[str] | None, limit: int | None = None) -> list[Task]:
    return [load_task(spec, limit) for spec in parse_task_list(specs)]


def task_names(specs: str | list[str] | None) -> list[str]:
    """The names tasks are reported under (``"piqa"``, ``"mine"`` for ``mine=FILE.jsonl``)."""
    return [_split_spec(spec)[0] for spec in parse_task_list(specs)]


def run_task(model, tokenizer, task: Task, batch_size: int = 8, progress: bool = False) -> dict:
    """Score ``task`` with the shipped ``evaluate`` metric of its kind: ``{"acc", ...}``."""
    from .modules import load_metric

    common = {"model": model, "tokenizer": tokenizer, "batch_size": batch_size, "progress": progress}
    if task.kind == LAST_WORD:
        return load_metric("last_word").compute(contexts=[e["context"] for e in task.examples],
                                                targets=[e["target"] for e in task.examples], **common)
    return load_metric("multiple_choice").compute(contexts=[e["contexts"] for e in task.examples],
                                                  choices=[e["choices"] for e in task.examples],
                                                  labels=[e["label"] for e in task.examples], **common)


"""Task loading: local JSONL schema, Hub record converters, and clear errors."""

from __future__ import annotations

import json

import pytest

from pruning_hf.evaluation.tasks import LAST_WORD, MULTIPLE_CHOICE, TASKS, TaskError, load_task, parse_task_list


def _write(path, records) -> str:
    path.write_text("\n".join(json.dumps(r) if not isinstance(r, str) else r for r in records) + "\n")
    return str(path)


def test_local_multiple_choice_and_last_word_files(tmp_path):
    mc = _write(tmp_path / "quiz.jsonl", [
        {"context": "Question: 2+2?\nAnswer:", "choices": ["4", "5"], "label": 0},
        {"contexts": ["The cup fell because the cup", "The cup fell because the table"], "continuation": "was full.",
         "label": 1},
        {"context": "Q: sky?\nA:", "choices": ["blue", "green", "red"], "label": 0},
    ])
    task = load_task(mc)
    assert (task.name, task.kind, task.source) == ("quiz", MULTIPLE_CHOICE, mc)
    assert task.examples[0] == {"contexts": ["Question: 2+2?\nAnswer:"] * 2, "choices": ["4", "5"], "label": 0}
    assert task.examples[1]["choices"] == ["was full.", "was full."] and task.examples[1]["label"] == 1
    assert len(load_task(f"renamed={mc}", limit=2).examples) == 2
    assert load_task(f"renamed={mc}").name == "renamed"

    lw = _write(tmp_path / "words.jsonl", [{"text": "the cat sat on the mat"}, {"context": "hello", "target": "world"}])
    task = load_task(lw)
    assert task.kind == LAST_WORD
    assert task.examples == [{"context": "the cat sat on the", "target": "mat"}, {"context": "hello", "target": "world"}]


@pytest.mark.parametrize("record, message", [
    ({"context": "q", "choices": ["a", "b"]}, "'label' must be an integer index"),
    ({"context": "q", "choices": ["a", "b"], "label": 2}, "'label' must be an integer index"),
    ({"context": "q", "choices": ["a"], "label": 0}, "list of >= 2 non-empty strings"),
    ({"choices": ["a", "b"], "label": 0}, "needs a 'context'"),
    ({"question": "q", "answer": "a"}, "no task fields"),
    ({"text": "oneword"}, "at least two space-separated words"),
    ("{not json", "is not valid JSON"),
])
def test_bad_task_records_name_file_and_line(tmp_path, record, message):
    path = _write(tmp_path / "bad.jsonl", [{"context": "q", "choices": ["a", "b"], "label": 0}, record])
    with pytest.raises(TaskError, match=message) as err:
        load_task(path)
    assert f"{path}:2" in str(err.value)


def test_mixed_kinds_empty_and_missing_files(tmp_path):
    mixed = _write(tmp_path / "mixed.jsonl", [{"context": "q", "choices": ["a", "b"], "label": 0}, {"text": "a b"}])
    with pytest.raises(TaskError, match="one kind per file"):
        load_task(mixed)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(TaskError, match="holds no examples"):
        load_task(str(tmp_path / "empty.jsonl"))
    with pytest.raises(TaskError, match="does not exist"):
        parse_task_list(f"x={tmp_path / 'missing.jsonl'}")


def test_unknown_and_duplicate_task_names():
    with pytest.raises(TaskError, match=r"unknown task 'piqq'; known tasks: piqa, arc_easy.*NAME=FILE.jsonl"):
        parse_task_list("piqa,piqq")
    with pytest.raises(TaskError, match="listed twice"):
        parse_task_list(["piqa", "piqa"])
    assert parse_task_list(" piqa , arc_easy ,") == ["piqa", "arc_easy"]


def test_hub_task_offline_names_the_local_alternative():
    with pytest.raises(TaskError) as err:
        load_task("piqa", limit=5)
    message = str(err.value)
    assert "cannot fetch task 'piqa' from the Hub (ybisk/piqa" in message
    assert "--tasks piqa=FILE.jsonl" in message and '"choices"' in message


def test_hub_record_converters_follow_lm_eval_prompts():
    piqa = TASKS["piqa"].convert({"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat it", "label": 0})
    assert piqa == {"contexts": ["Question: Open a jar\nAnswer:"] * 2, "choices": ["twist the lid", "eat it"], "label": 0}
    arc = TASKS["arc_easy"].convert({"question": "Which is a gas?", "answerKey": "C",
                                     "choices": {"text": ["ice", "water", "steam"], "label": ["A", "B", "C"]}})
    assert arc["label"] == 2 and arc["contexts"][0] == "Question: Which is a gas?\nAnswer:"
    hella = TASKS["hellaswag"].convert({"activity_label": "Baking", "ctx_a": "She mixes flour.", "ctx_b": "then she",
                                        "endings": ["bakes it [title] well.", "sleeps."], "label": "0"})
    assert hella["contexts"][0] == "Baking: She mixes flour. Then she"
    assert hella["choices"] == ["bakes it. well.", "sleeps."] and hella["label"] == 0
    boolq = TASKS["boolq"].convert({"passage": "Cats are mammals.", "question": "is a cat a mammal", "answer": True})
    assert boolq == {"contexts": ["Cats are mammals.\nQuestion: is a cat a mammal?\nAnswer:"] * 2,
                     "choices": ["no", "yes"], "label": 1}
    wino = TASKS["winogrande"].convert({"sentence": "The trophy did not fit the case because _ was big.",
                                        "option1": "the trophy", "option2": "the case", "answer": "1"})
    assert wino == {"contexts": ["The trophy did not fit the case because the trophy",
                                 "The trophy did not fit the case because the case"],
                    "choices": ["was big.", "was big."], "label": 0}
    assert TASKS["lambada"].convert({"text": "he picked up the ball"}) == {"context": "he picked up the", "target": "ball"}

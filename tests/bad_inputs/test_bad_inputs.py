"""Every row of the bad-input corpus (cases.py) fails fast with one clear message.

API rows: the expected exception type (a ValueError subclass or a pruning_hf error, never an
exception class from torch / transformers / safetensors) whose message matches every regex.
CLI rows: the expected exit code (2 for user errors), exactly one stderr line and no traceback.
Rows without ``loads_model``: no weights load and no calibration runs before the error.
"""

from __future__ import annotations

import re

import pytest
from cases import CASES, Case, Env

from pruning_hf.cli import main


class ExpensiveWorkStarted(AssertionError):
    pass


@pytest.fixture
def env(tmp_path, make_checkpoint, tokenizer, text_file, monkeypatch) -> Env:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()
    return Env(work, make_checkpoint, tokenizer, text_file)


def _forbid_expensive_work(monkeypatch, loads_model: bool) -> None:
    """Loading weights (unless the case is about weights) or calibrating fails the test."""
    import transformers

    import pruning_hf.engine.loop

    def refuse(what):
        def stop(*args, **kwargs):
            raise ExpensiveWorkStarted(f"{what} started before the bad input was reported")
        return stop

    if not loads_model:
        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse("loading model weights"))
    monkeypatch.setattr(pruning_hf.engine.loop, "capture_layer_inputs", refuse("calibration"))


def _check_message(message: str, case: Case) -> None:
    for pattern in case.match:
        assert re.search(pattern, message), f"{case.id}: {pattern!r} not in {message!r}"
    assert "Traceback" not in message and "site-packages" not in message, message


@pytest.mark.parametrize("case", [c for c in CASES if c.call], ids=lambda c: c.id)
def test_api_raises_one_clear_error(case: Case, env: Env, monkeypatch):
    if case.patch:
        case.patch(env, monkeypatch)
    _forbid_expensive_work(monkeypatch, case.loads_model)
    with pytest.raises(case.error) as caught:
        case.call(env)
    error = caught.value
    assert not isinstance(error, ExpensiveWorkStarted), str(error)
    assert type(error).__module__.split(".")[0] in ("pruning_hf", "builtins"), type(error)
    _check_message(str(error), case)
    if case.after:
        case.after(env)


@pytest.mark.parametrize("case", [c for c in CASES if c.argv], ids=lambda c: c.id)
def test_cli_exits_with_one_stderr_line(case: Case, env: Env, monkeypatch, capsys):
    argv = [str(arg) for arg in case.argv(env)]
    if case.patch:
        case.patch(env, monkeypatch)
    _forbid_expensive_work(monkeypatch, case.loads_model)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == case.exit_code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("pruning-hf"), err
    _check_message(lines[0], case)


def test_corpus_covers_every_area():
    """The corpus stays broad: at least 25 rows, each area represented."""
    prefixes = {case.id.split("-")[0] for case in CASES}
    assert len(CASES) >= 25
    assert {"sparsity", "pattern", "model", "data", "recipe", "output", "cli"} <= prefixes
    assert len({case.id for case in CASES}) == len(CASES)

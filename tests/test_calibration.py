"""Text sources and token windows."""

import json

import pytest
import torch

from pruning_hf.data.text import (DataSourceError, calibration_windows, consecutive_windows, load_texts,
                                    parse_hub_source, sample_windows, tokenize_texts)
from pruning_hf.config import CalibrationConfig


def test_embedded_corpus_has_disjoint_train_and_test_splits():
    train, test = load_texts("embedded"), load_texts("embedded@test")
    assert load_texts("embedded@train") == train
    assert not set(train) & set(test)
    assert sum(map(len, test)) > 60_000 and sum(map(len, train)) > 4 * sum(map(len, test))
    with pytest.raises(DataSourceError, match="splits 'train' and 'test', not 'valid'"):
        load_texts("embedded@valid")


def test_local_txt_jsonl_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("alpha text")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "beta"}) + "\n\n" + json.dumps({"body": "gamma"}) + "\n")
    assert load_texts(str(tmp_path / "a.txt")) == ["alpha text"]
    assert load_texts(str(tmp_path / "b.jsonl"), text_column="body") == ["beta", "gamma"]
    assert load_texts(str(tmp_path), text_column="body") == ["alpha text", "beta", "gamma"]


@pytest.mark.parametrize("setup,source,message", [
    (lambda p: (p / "e.txt").write_text("  \n"), "e.txt", "contains no text"),
    (lambda p: (p / "b.txt").write_bytes(b"\x00\x01\x02binary"), "b.txt", "looks binary"),
    (lambda p: (p / "l.txt").write_bytes(b"\xff\xfe\xfa"), "l.txt", "not UTF-8 text"),
    (lambda p: (p / "c.jsonl").write_text('{"content": "x"}\n'), "c.jsonl", r"c.jsonl:1 has no text column 'text' \(found: \['content'\]\)"),
    (lambda p: (p / "j.jsonl").write_text('{"text": \n'), "j.jsonl", "j.jsonl:1 is not valid JSON"),
    (lambda p: (p / "d").mkdir(), "d", "holds no .txt or .jsonl files"),
    (lambda p: None, "missing.txt", "text file or folder .*missing.txt' does not exist"),
])
def test_bad_sources_raise_clear_errors(tmp_path, setup, source, message):
    setup(tmp_path)
    with pytest.raises(DataSourceError, match=message):
        load_texts(str(tmp_path / source))


def test_unknown_hub_dataset_offline_names_the_local_alternative():
    with pytest.raises(DataSourceError, match=r"could not load Hub dataset 'no-such-org/no-such-data'.*local .txt/.jsonl"):
        load_texts("no-such-org/no-such-data")


def test_hub_source_syntax_and_aliases():
    assert parse_hub_source("wikitext:wikitext-2-raw-v1@test") == parse_hub_source("wikitext2@test")
    c4 = parse_hub_source("c4")
    assert c4.path == "allenai/c4" and c4.split == "train" and "en/" in c4.data_files["train"]
    assert parse_hub_source("user/data").split == "train"


def test_windows_are_seeded_and_sized(tokenizer):
    tokens = tokenize_texts(load_texts("embedded@test"), tokenizer)
    first = sample_windows(tokens, 5, 64, seed=1)
    assert first.shape == (5, 64) and torch.equal(first, sample_windows(tokens, 5, 64, seed=1))
    assert not torch.equal(first, sample_windows(tokens, 5, 64, seed=2))
    with pytest.raises(DataSourceError, match="fewer than one window of seq_len=100"):
        sample_windows(tokens[:50], 2, 100, seed=0, source="tiny")
    windows = consecutive_windows(torch.arange(10), 4)
    assert [w.tolist() for w in windows] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert consecutive_windows(torch.arange(10), 4, keep_partial=True)[-1].tolist() == [8, 9]


def test_calibration_windows_cap_seq_len_to_the_model_context(tokenizer, text_file):
    config = CalibrationConfig(source=str(text_file), num_samples=3, seq_len=4096)
    assert calibration_windows(config, tokenizer, max_seq_len=128).shape == (3, 128)

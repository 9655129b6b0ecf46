"""Data sources: every kind round-trips to the token ids it should, and bad data is one clear
error (ids outside the vocabulary, sequences longer than the context, no tokenizer)."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from estimators import zoo
from estimators.data import DataError, DataSource, parse_spec
from estimators.loading import LoadedModel

from .conftest import N_CTX, SENTENCES


def windows(ids, length, bos=None):
    body = length - (bos is not None)
    return [([bos] if bos is not None else []) + ids[i:i + body]
            for i in range(0, len(ids) - body + 1, body)]


def test_token_file_round_trip(tmp_path, loaded):
    seqs = [[i % 7 + j for i in range(6)] for j in range(10)]
    (tmp_path / "t.json").write_text(json.dumps(seqs))
    d = parse_spec(f"tokens:{tmp_path / 't.json'}").load(loaded)
    assert d.tokens.tolist() == seqs and d.tokens.dtype == torch.long
    # n and seed draw a subset without replacement, in file order, reproducibly
    a = parse_spec(f"tokens:{tmp_path / 't.json'},n=4,seed=3").load(loaded)
    b = parse_spec(f"{tmp_path / 't.json'},seed=3,n=4").load(loaded)  # bare .json path
    assert a.tokens.tolist() == b.tokens.tolist() and a.fingerprint == b.fingerprint
    rows = [seqs.index(r) for r in a.tokens.tolist()]
    assert len(set(rows)) == 4 and rows == sorted(rows) and a.n_available == 10
    # len cuts every list into windows
    c = parse_spec(f"tokens:{tmp_path / 't.json'},len=3").load(loaded)
    assert c.tokens.tolist() == [w for s in seqs for w in windows(s, 3)]


def test_text_file_and_folder_use_the_models_tokenizer(tmp_path, ckpt, loaded, corpus):
    _, _, tok = ckpt
    ids = tok.encode(corpus.read_text()).ids
    d = parse_spec(f"text:{corpus},len=8,n=1000").load(loaded)
    assert d.tokens.tolist() == windows(ids, 8)
    e = parse_spec(f"text:{corpus},len=8,n=1000,bos=1").load(loaded)
    assert e.tokens.tolist() == windows(ids, 8, bos=tok.token_to_id("<|endoftext|>"))
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text(SENTENCES[1])
    (folder / "sub" / "a.txt").write_text(SENTENCES[0])
    f = parse_spec(f"text:{folder},len=4,n=1000").load(loaded)
    expect = windows(tok.encode(SENTENCES[1]).ids, 4) + windows(tok.encode(SENTENCES[0]).ids, 4)
    assert f.tokens.tolist() == expect  # files in sorted path order: b.txt < sub/a.txt


def test_tokenizer_option_and_no_tokenizer(tmp_path, ckpt, corpus):
    folder, model, tok = ckpt
    bare = LoadedModel(model, "in-memory", "checkpoint-free")
    with pytest.raises(DataError, match="no tokenizer"):
        parse_spec(f"text:{corpus}").load(bare)
    tok.save(str(tmp_path / "tokenizer.json"))
    d = parse_spec(f"text:{corpus},len=8,tokenizer={tmp_path / 'tokenizer.json'}").load(bare)
    assert d.tokens[0].tolist() == tok.encode(corpus.read_text()).ids[:8]


def test_datasets_folder_text_and_ids(tmp_path, ckpt, loaded):
    _, _, tok = ckpt
    ds = datasets.Dataset.from_dict({"text": SENTENCES,
                                     "input_ids": [tok.encode(s).ids for s in SENTENCES]})
    ds.save_to_disk(str(tmp_path / "ds"))
    by_text = parse_spec(f"hf:{tmp_path / 'ds'}:text,len=5,n=1000").load(loaded)
    by_ids = parse_spec(f"hf:{tmp_path / 'ds'},len=5,n=1000").load(loaded)  # input_ids first
    assert sorted(by_text.tokens.tolist()) == sorted(by_ids.tokens.tolist())
    expect = [w for s in SENTENCES for w in windows(tok.encode(s).ids, 5)]
    assert sorted(by_ids.tokens.tolist()) == sorted(expect)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    test = parse_spec(f"{tmp_path / 'dd'},split=test,column=input_ids,len=5").load(loaded)
    assert test.tokens.tolist() == windows(tok.encode(SENTENCES[0]).ids, 5)
    with pytest.raises(DataError, match="no column"):
        parse_spec(f"hf:{tmp_path / 'ds'}:nope").load(loaded)


def test_zoo_generator():
    entry = zoo.get("induction")
    lm = LoadedModel(entry.load_model("cpu"), "induction", "zoo")
    d = parse_spec("zoo,n=16,seed=4").load(lm)
    assert torch.equal(d.tokens, entry.sample(16, seed=4).tokens)
    assert d.next_token_batch() is d.zoo_batch


@pytest.mark.parametrize("content,spec_tail,needle", [
    ([[1, 2, 400]], "", "token id 400 (sequence 0, position 2) is outside the model's "
                        "vocabulary 0..299"),
    ([[1, -1]], "", "outside the model's vocabulary"),
    ([list(range(N_CTX + 1))], "", "longer than the model's context n_ctx=16"),
    ([[1, 2, 3]], ",len=17", "longer than the model's context n_ctx=16"),
    ([[1, 2, 3], [1, 2]], "", "same length"),
    ([[1, 2]], ",len=5", "no document holds 5 tokens"),
    ([[1, "a"]], "", "not a list of integer token ids"),
])
def test_bad_token_data_is_one_clear_error(tmp_path, loaded, content, spec_tail, needle):
    (tmp_path / "t.json").write_text(json.dumps(content))
    with pytest.raises(DataError) as e:
        parse_spec(f"tokens:{tmp_path / 't.json'}{spec_tail}").load(loaded)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_text_outside_a_smaller_vocabulary(tmp_path, ckpt, corpus):
    from estimators.loading import save_checkpoint

    from .conftest import tiny_model
    folder = save_checkpoint(tiny_model(d_vocab=50), tmp_path / "small")
    (folder / "vocab.json").write_text((ckpt[0] / "vocab.json").read_text())
    (folder / "merges.txt").write_text((ckpt[0] / "merges.txt").read_text())
    from estimators.loading import load_model
    with pytest.raises(DataError, match="outside the model's vocabulary 0..49"):
        parse_spec(f"text:{corpus},len=8").load(load_model(str(folder)))


@pytest.mark.parametrize("spec,needle", [
    ("", "no data given"), ("csv:x.csv", "unknown data kind"), ("tokens:", "needs a path"),
    ("zoo,n=0", "at least 1"), ("zoo,len=x", "must be an integer"),
    ("zoo,n=2,n=3", "given twice"), ("zoo,foo=1", "unknown data option"),
    ("nowhere/at/all", "neither zoo nor an existing path"), ("zoo,column=x", "hf: datasets"),
])
def test_bad_specs(spec, needle):
    with pytest.raises(DataError, match=needle):
        parse_spec(spec)


def test_spec_round_trip_and_defaults(tmp_path):
    s = parse_spec("hf:/data/set:text,n=8,len=32,seed=2,bos=1,split=test")
    assert s == DataSource("hf", "/data/set", 8, 32, 2, True, "test", "text")
    assert parse_spec(s.spec) == s
    assert parse_spec("zoo", n=5, seed=7) == DataSource("zoo", None, 5, None, 7)
    assert parse_spec("zoo,n=3", n=5).n == 3  # the spec wins over the command's default
    (tmp_path / "a,b.txt").write_text("x")  # a comma in a path is kept
    assert parse_spec(f"{tmp_path / 'a,b.txt'},n=2").path == str(tmp_path / "a,b.txt")


def test_loads_are_memoised_until_the_file_changes(tmp_path, loaded):
    import os

    path = tmp_path / "t.json"
    path.write_text(json.dumps([[1, 2], [3, 4]]))
    a = parse_spec(f"tokens:{path}").load(loaded)
    assert parse_spec(f"tokens:{path}").load(loaded) is a
    path.write_text(json.dumps([[5, 6], [7, 8]]))
    os.utime(path, ns=(1, 1))  # a new modification time even on a coarse clock
    b = parse_spec(f"tokens:{path}").load(loaded)
    assert b.tokens.tolist() == [[5, 6], [7, 8]] and b.fingerprint != a.fingerprint


def test_hugging_face_folder_tokenizer(tmp_path, ckpt, corpus):
    """A Hugging Face model folder without tokenizer files boots with an empty tokenizer: that
    is no tokenizer (one clear error), and with tokenizer files saved next to it text works."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from estimators import activation_cache
    from estimators.loading import load_model

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16,
                                    vocab_size=300, bos_token_id=0, eos_token_id=0)).eval()
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(DataError, match="no tokenizer"):
        parse_spec(f"text:{corpus},len=8").load(load_model(str(tmp_path / "hf")))
    tok = ckpt[2]
    PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer).save_pretrained(tmp_path / "hf")
    lm = load_model(str(tmp_path / "hf"))
    d = parse_spec(f"text:{corpus},len=8,n=1000").load(lm)
    assert d.tokens.tolist() == windows(tok.encode(corpus.read_text()).ids, 8)
    acts = activation_cache.activations(lm.model, d, ["blocks.0.hook_resid_post"])
    with torch.no_grad():
        _, cache = lm.model.run_with_cache(d.tokens)
    assert torch.equal(acts["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_post"])

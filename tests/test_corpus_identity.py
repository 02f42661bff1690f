"""What a preparation is (data/corpus.py): the ordered plan of units, the tokenizer and its options. State left by
another preparation (unit records, shards, tokenizer files) is never reused, and a refused command changes nothing."""
import json
import os
import random

import pytest

from helpers import run
import corpus

WORDS = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'and', 'ran', 'away', 'ünïcödé', '😀', '1234', 'naïve', '—', 'x']


def jsonl(path, texts):
    path.write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts))
    return str(path)


def texts(n, seed=0):
    rng = random.Random(seed)
    return [' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(n)]


def split_tokens(out_dir, split):
    import numpy as np
    meta = json.load(open(os.path.join(out_dir, 'meta.json')))
    return np.concatenate([np.fromfile(os.path.join(out_dir, s['file']), dtype=meta['dtype'])
                           for s in meta['shards'][split]]).tolist()


def stop(*_, **__):
    raise KeyboardInterrupt


def interrupted(monkeypatch, *args, **kwargs):
    """A prepare stopped once every unit is done, before any shard is written: .prepare/ keeps its records."""
    with monkeypatch.context() as m:
        m.setattr(corpus, 'write_shards', stop)
        with pytest.raises(KeyboardInterrupt):
            corpus.prepare(*args, **kwargs)
    assert os.path.isfile(os.path.join(args[1], corpus.WORK, 'plan.json'))


def test_resume_keys_on_the_ordered_plan_of_units(tmp_path, monkeypatch):
    a = jsonl(tmp_path / 'a.jsonl', texts(20, seed=1))
    b = jsonl(tmp_path / 'b.jsonl', texts(20, seed=2))
    v = jsonl(tmp_path / 'v.jsonl', texts(5, seed=3))
    options = dict(num_proc=1, unit_mb=0.001)
    # the same files in another order, or moved between --input and --val_input: other plans
    for (first, first_val), (then, then_val) in [(([a, b], [v]), ([b, a], [v])), (([a], [b]), ([b], [a]))]:
        out = str(tmp_path / f'out_{len(first)}')
        interrupted(monkeypatch, first, out, 'char', val_inputs=first_val, **options)
        with pytest.raises(corpus.PrepareError, match='unfinished prepare of other inputs'):
            corpus.prepare(then, out, 'char', val_inputs=then_val, **options)
        corpus.prepare(then, out, 'char', val_inputs=then_val, overwrite=True, **options)
        fresh = str(tmp_path / f'fresh_{len(first)}')
        corpus.prepare(then, fresh, 'char', val_inputs=then_val, **options)
        for split in ('train', 'val'):
            assert split_tokens(out, split) == split_tokens(fresh, split)


def tree_bytes(directory):
    return {os.path.relpath(os.path.join(d, n), directory): open(os.path.join(d, n), 'rb').read()
            for d, _, names in os.walk(directory) for n in names}


def prepare(*args, code=0):
    r = run('data/custom/prepare.py', '--num_proc=1', '--val_fraction=0.2', *args)
    assert r.returncode == code, r.stdout + r.stderr
    return r


def test_sentencepiece_options_are_part_of_the_preparation(tmp_path):
    docs = texts(150)
    source = jsonl(tmp_path / 'docs.jsonl', docs)
    out = tmp_path / 'd'
    base = [f'--input={source}', f'--out_dir={out}', '--tokenizer=sentencepiece']
    prepare(*base, '--vocab_size=300')
    before, trained = tree_bytes(out), os.stat(out / 'tokenizer.model').st_mtime_ns
    # an identical rerun of a finished dataset does not train again
    assert 'already prepared' in prepare(*base, '--vocab_size=300').stdout
    assert os.stat(out / 'tokenizer.model').st_mtime_ns == trained and tree_bytes(out) == before
    # another vocabulary size is another preparation: refused, and nothing is written
    assert 'pass --overwrite' in prepare(*base, '--vocab_size=320', code=2).stderr
    jsonl(tmp_path / 'docs.jsonl', docs + ['one more document'])
    assert 'pass --overwrite' in prepare(*base, '--vocab_size=320', code=2).stderr
    other = tmp_path / 'other'
    prepare(f'--input={source}', f'--out_dir={other}', '--tokenizer=sentencepiece', '--vocab_size=320')
    assert 'pass --overwrite' in prepare(*base, f'--sp_model={other / "tokenizer.model"}', code=2).stderr
    assert tree_bytes(out) == before
    # --overwrite builds the new one, and the shards are its tokens
    prepare(*base, '--vocab_size=320', '--overwrite')
    assert json.load(open(out / 'meta.json'))['vocab_size'] == 320
    assert split_tokens(out, 'train') == split_tokens(other, 'train')  # the model (its bytes name its folder)


def test_overwrite_over_an_unfinished_prepare_uses_the_new_tokenizer_options(tmp_path, monkeypatch):
    source = jsonl(tmp_path / 'docs.jsonl', texts(150))
    out = tmp_path / 'd'
    base = [f'--input={source}', f'--out_dir={out}', '--tokenizer=sentencepiece']
    with monkeypatch.context() as m:
        m.setattr(corpus, 'write_shards', stop)  # stopped before the shards: .prepare/ holds model and units
        assert 'interrupted' in prepare(*base, '--vocab_size=300', code=2).stderr
    assert 'unfinished prepare' in prepare(*base, '--vocab_size=320', code=2).stderr
    prepare(*base, '--vocab_size=320', '--overwrite')
    assert json.load(open(out / 'meta.json'))['vocab_size'] == 320


def hf_folder(path, words):
    """A tiny word-level Hugging Face tokenizer folder, built offline."""
    tokenizers = pytest.importorskip('tokenizers')
    transformers = pytest.importorskip('transformers', reason='transformers is not installed')
    vocab = {w: i for i, w in enumerate(['[UNK]', '</s>', *words])}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='[UNK]'))
    model.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=model, unk_token='[UNK]', eos_token='</s>')
    hf.save_pretrained(path)
    return str(path)


def test_a_hugging_face_folder_is_copied_only_into_an_accepted_preparation(tmp_path):
    source = jsonl(tmp_path / 'docs.jsonl', texts(40))
    out = tmp_path / 'd'
    first, second = hf_folder(tmp_path / 'hf1', WORDS), hf_folder(tmp_path / 'hf2', WORDS[::-1])
    prepare(f'--input={source}', f'--out_dir={out}', f'--tokenizer={first}')
    before = tree_bytes(out)
    assert 'already prepared' in prepare(f'--input={source}', f'--out_dir={out}', f'--tokenizer={first}').stdout
    assert 'pass --overwrite' in prepare(f'--input={source}', f'--out_dir={out}', f'--tokenizer={second}',
                                         code=2).stderr
    assert tree_bytes(out) == before
    prepare(f'--input={source}', f'--out_dir={out}', f'--tokenizer={second}', '--overwrite')
    assert tree_bytes(out / 'tokenizer') == tree_bytes(second) and split_tokens(out, 'train') != [] and \
        tree_bytes(out) != before


def test_overwrite_never_keeps_shards_or_tokenizer_files_of_the_old_dataset(tmp_path):
    docs = texts(60)
    train, val = tmp_path / 'train.jsonl', tmp_path / 'val.jsonl'
    jsonl(train, docs)
    jsonl(val, texts(10, seed=5))
    out = tmp_path / 'd'
    base = [f'--input={train}', f'--val_input={val}', f'--out_dir={out}', '--shard_tokens=300']
    prepare(*base, '--tokenizer=char')
    # one character changed for another of the corpus: every shard keeps its size, not its bytes
    i = docs[0].index('a')
    jsonl(train, [docs[0][:i] + 't' + docs[0][i + 1:]] + docs[1:])
    prepare(*base, '--tokenizer=char', '--overwrite')
    fresh = tmp_path / 'fresh'
    prepare(*base[:2], f'--out_dir={fresh}', '--shard_tokens=300', '--tokenizer=char')
    assert tree_bytes(out) == tree_bytes(fresh)
    # a dataset of fewer shards and another tokenizer over one with a SentencePiece model
    prepare(*base, '--tokenizer=sentencepiece', '--vocab_size=300', '--overwrite')
    assert (out / 'tokenizer.model').exists() and (out / 'tokenizer.vocab').exists()
    jsonl(train, docs[:20])
    prepare(*base, '--tokenizer=char', '--overwrite')
    fresh = tmp_path / 'fresh_small'
    prepare(*base[:2], f'--out_dir={fresh}', '--shard_tokens=300', '--tokenizer=char')
    assert tree_bytes(out) == tree_bytes(fresh)


def test_a_resume_whose_tokenizer_files_are_gone_starts_over(tmp_path, monkeypatch):
    source = jsonl(tmp_path / 'docs.jsonl', texts(150))
    base = [f'--input={source}', f'--out_dir={tmp_path / "d"}', '--tokenizer=sentencepiece', '--vocab_size=300']
    with monkeypatch.context() as m:
        m.setattr(corpus, 'write_shards', stop)
        prepare(*base, code=2)
    os.remove(tmp_path / 'd' / 'tokenizer.model')
    prepare(*base)
    prepare(*base[:1], f'--out_dir={tmp_path / "fresh"}', *base[2:])
    assert split_tokens(tmp_path / 'd', 'train') == split_tokens(tmp_path / 'fresh', 'train')

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


def interrupted(monkeypatch, *args, **kwargs):
    """A prepare stopped once every unit is done, before any shard is written: .prepare/ keeps its records."""
    def stop(*_, **__):
        raise KeyboardInterrupt
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

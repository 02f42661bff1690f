import json
import os

import numpy as np
import pytest

from helpers import SHARED, run
from loader import TokenStream
from tokenizer import load_tokenizer

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n  All:\tSpeak, speak!  \n"
        "ünïcödé — 😀 1234567890\n") * 40
HAS_TIKTOKEN_CACHE = os.path.isdir(os.path.join(SHARED, 'tiktoken_cache'))


def check_dataset(out_dir, text=None):
    meta = json.load(open(os.path.join(out_dir, 'meta.json')))
    assert set(meta) >= {'tokenizer', 'vocab_size', 'dtype', 'train_tokens', 'val_tokens', 'source_sha256'}
    tok = load_tokenizer(out_dir)
    assert tok.vocab_size == meta['vocab_size']
    arrays = {}
    for split in ('train', 'val'):
        stream = TokenStream(str(out_dir), split, meta)  # one train.bin, or the shards meta.json lists
        arrays[split] = stream.windows([0], stream.total)[0]
        assert len(arrays[split]) == meta[f'{split}_tokens'] > 0
        assert arrays[split].max() < meta['vocab_size']
    if text is not None:
        assert tok.decode(tok.encode(text)) == text  # exact round trip
        assert tok.decode(arrays['train']) + tok.decode(arrays['val']) == text
    return meta, tok


def prepare(name, *args):
    r = run(f'data/{name}/prepare.py', *args)
    assert r.returncode == 0, r.stderr
    return r


def test_shakespeare_char(tmp_path):
    src = tmp_path / 'input.txt'
    src.write_text(TEXT)
    prepare('shakespeare_char', f'--input={src}', f'--out_dir={tmp_path / "d"}')
    meta, tok = check_dataset(tmp_path / 'd', TEXT)
    assert meta['vocab_size'] == len(set(TEXT)) and meta['dtype'] == 'uint16'
    assert meta['train_tokens'] == int(0.9 * len(TEXT))


def test_shakespeare_sentencepiece(tmp_path):
    src = tmp_path / 'input.txt'
    src.write_text(TEXT)
    prepare('shakespeare_sp', f'--input={src}', f'--out_dir={tmp_path / "d"}', '--vocab_size=400')
    meta, tok = check_dataset(tmp_path / 'd', TEXT)
    assert meta['tokenizer']['type'] == 'sentencepiece' and (tmp_path / 'd' / 'tokenizer.model').exists()
    odd = '  two  spaces\t\ttabs\n\n\nnewlines and 漢字 never seen in training '
    assert tok.decode(tok.encode(odd)) == odd  # byte fallback and no whitespace collapsing


@pytest.mark.skipif(not HAS_TIKTOKEN_CACHE, reason='no tiktoken cache in ../shared/data (GPT-2 BPE needs it offline)')
def test_shakespeare_gpt2_bpe(tmp_path):
    src = tmp_path / 'input.txt'
    src.write_text(TEXT)
    prepare('shakespeare', f'--input={src}', f'--out_dir={tmp_path / "d"}')
    meta, tok = check_dataset(tmp_path / 'd', TEXT)
    assert meta['vocab_size'] == 50257 and tok.encode('Hello world') == [15496, 995]


def split_ids(out_dir, meta, split):
    stream = TokenStream(str(out_dir), split, meta)
    return stream.windows([0], stream.total)[0].tolist()


@pytest.mark.skipif(not HAS_TIKTOKEN_CACHE, reason='no tiktoken cache in ../shared/data (GPT-2 BPE needs it offline)')
def test_tinystories_end_of_text_between_stories(tmp_path):
    stories = ['Once upon a time there was a cat.', 'The dog ran.\nIt was happy.', 'The café was naïve — 😀.',
               'The end came.'] * 8
    folder = tmp_path / 'src'
    folder.mkdir()
    (folder / 'train.txt').write_text('\n\n'.join(stories[:24]) + '\n \n\n')
    (folder / 'valid.txt').write_text('\n<|endoftext|>\n'.join(stories[24:]))  # both separators are understood
    prepare('tinystories', f'--input={folder}', f'--out_dir={tmp_path / "d"}', '--num_proc=1')
    meta, tok = check_dataset(tmp_path / 'd')
    for split, told in (('train', stories[:24]), ('val', stories[24:])):
        # the reference encoding, one end-of-text token after each story; bytes are the stories' own, no joins
        assert split_ids(tmp_path / 'd', meta, split) == [i for s in told for i in tok.encode(s) + [tok.eot]]
        assert meta[f'{split}_bytes'] == sum(len(s.encode('utf-8')) for s in told)
        assert meta[f'{split}_documents'] == len(told)
    assert 'already prepared' in prepare('tinystories', f'--input={folder}', f'--out_dir={tmp_path / "d"}').stdout


# runs a script, then prints its peak resident memory in kB (VmHWM, unlike ru_maxrss, starts afresh at exec)
PEAK_MEMORY = ("import runpy, sys\nsys.argv = sys.argv[1:]\n"
               "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
               "finally:\n    print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")


@pytest.mark.skipif(not HAS_TIKTOKEN_CACHE, reason='no tiktoken cache in ../shared/data (GPT-2 BPE needs it offline)')
@pytest.mark.skipif(not os.path.exists('/proc/self/status'), reason='peak memory is read from /proc (Linux)')
def test_tinystories_memory_does_not_grow_with_the_corpus(tmp_path):
    import random
    import subprocess
    import sys
    from helpers import ROOT
    rng = random.Random(0)
    words = ['Once', 'upon', 'a', 'time', 'little', 'cat', 'dog', 'ran', 'happy', 'sun', 'tree', 'and', 'the']
    peaks, sizes = [], []
    for n in (100, 25_000):  # 50 kB and 12 MB of stories in one file, blank lines between them, 5% to val
        text = '\n\n'.join(' '.join(rng.choices(words, k=rng.randint(20, 200))) + '.' for _ in range(n))
        (tmp_path / f'{n}.txt').write_text(text)
        r = subprocess.run([sys.executable, '-c', PEAK_MEMORY, os.path.join(ROOT, 'data', 'tinystories', 'prepare.py'),
                            f'--input={tmp_path / f"{n}.txt"}', f'--out_dir={tmp_path / str(n)}', '--num_proc=1'],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        meta, _ = check_dataset(tmp_path / str(n))
        assert meta['train_documents'] + meta['val_documents'] == n
        assert meta['train_bytes'] + meta['val_bytes'] == len(text.encode()) - 2 * (n - 1)  # less the blank lines
        peaks.append(int(r.stdout.split()[-1]) * 1024)
        sizes.append(len(text.encode()))
    assert 0.03 < meta['val_documents'] / n < 0.07
    # the whole prepare, in one process, grows by less than the corpus it reads: no step holds all of it
    grown = peaks[1] - peaks[0]
    assert grown < sizes[1], f"{grown / 2 ** 20:.1f} MiB more for {sizes[1] / 2 ** 20:.1f} MiB of stories"


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, 'tinystories')) or not HAS_TIKTOKEN_CACHE,
                    reason='../shared/data/tinystories not present')
def test_tinystories_shared_sample(tmp_path):
    prepare('tinystories', f'--input={os.path.join(SHARED, "tinystories")}', f'--out_dir={tmp_path / "d"}',
            '--num_proc=1')
    meta, _ = check_dataset(tmp_path / 'd')
    assert meta['train_tokens'] > 100_000


@pytest.mark.parametrize('tokenizer', ['char', 'gpt2', 'sentencepiece'])
def test_custom_folder_with_train_and_val(tmp_path, tokenizer):
    if tokenizer == 'gpt2' and not HAS_TIKTOKEN_CACHE:
        pytest.skip('no tiktoken cache')
    (tmp_path / 'in' / 'train').mkdir(parents=True)
    (tmp_path / 'in' / 'val').mkdir()
    (tmp_path / 'in' / 'train' / 'a.txt').write_text(TEXT)
    (tmp_path / 'in' / 'val' / 'b.txt').write_text(TEXT[:500])
    prepare('custom', f'--input={tmp_path / "in"}', f'--out_dir={tmp_path / "d"}', f'--tokenizer={tokenizer}',
            '--vocab_size=400')
    meta, tok = check_dataset(tmp_path / 'd')
    val = TokenStream(str(tmp_path / 'd'), 'val', meta).windows([0], meta['val_tokens'])[0]
    assert val[-1] == tok.eot and (val == tok.eot).sum() == 1  # one document, one end-of-text token
    assert tok.decode(val[:-1]) == TEXT[:500].strip()  # a .txt file is one document, stripped
    if tokenizer == 'sentencepiece':  # reuse the trained model for another dataset
        prepare('custom', f'--input={tmp_path / "in"}', f'--out_dir={tmp_path / "d2"}',
                '--tokenizer=sentencepiece', f'--sp_model={tmp_path / "d" / "tokenizer.model"}')
        assert load_tokenizer(tmp_path / 'd2').vocab_size == tok.vocab_size


def test_large_vocabularies_use_uint32(tmp_path):
    from common import token_dtype
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(100277) == np.uint32


def test_prepare_without_source_fails_clearly(tmp_path):
    r = run('data/custom/prepare.py', f'--out_dir={tmp_path}')
    assert r.returncode == 2 and 'needs --input' in r.stderr and 'Traceback' not in r.stderr
    r = run('data/shakespeare_sp/prepare.py', f'--input={os.path.abspath(__file__)}', f'--out_dir={tmp_path}',
            '--vocab_size=100')
    assert r.returncode == 2 and 'too small' in r.stderr and 'Traceback' not in r.stderr
    r = run('data/shakespeare_char/prepare.py', f'--input={tmp_path / "missing.txt"}', f'--out_dir={tmp_path}')
    assert r.returncode == 2 and 'does not exist' in r.stderr and 'Traceback' not in r.stderr

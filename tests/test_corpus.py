"""The corpus engine (data/corpus.py) and the loader (loader.py): exact token counts, every input format,
independence from --num_proc and from the unit size, kill -9 and rerun, epoch sampling that visits every window."""
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT, SHARED, run
import corpus
import loader
from tokenizer import Tokenizer, load_tokenizer

HAS_TIKTOKEN_CACHE = os.path.isdir(os.path.join(SHARED, 'tiktoken_cache'))
WORDS = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'and', 'ran', 'away', 'ünïcödé', '😀', '1234', 'naïve', '—', 'x']


def documents(n, seed=0):
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        text = ' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 120)))
        if i % 7 == 0:
            text = '  ' + text + '\n\n'  # surrounding whitespace: kept in records, stripped from .txt documents
        if i % 11 == 0:
            text = text.replace(' ', '\n', 3)
        docs.append(text)
    return docs


def write_corpus(root, docs):
    """The documents spread over every input format, in an order the engine reads them (sorted paths);
    returns the documents as the engine sees them (.txt ones stripped, empty ones dropped)."""
    pa = pytest.importorskip('pyarrow', reason='pyarrow is not installed (pip install pyarrow)')
    pq = pytest.importorskip('pyarrow.parquet')
    zstandard = pytest.importorskip('zstandard', reason='zstandard is not installed (pip install zstandard)')
    root.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(docs)), 6)
    seen = []

    def records(indices):
        return ''.join(json.dumps({'text': docs[i], 'id': int(i)}) + '\n' for i in indices)
    (root / 'a.jsonl').write_text(records(parts[0]) + '\n')  # a blank line is skipped
    with gzip.open(root / 'b.jsonl.gz', 'wt') as f:
        f.write(records(parts[1]))
    (root / 'c.jsonl.zst').write_bytes(zstandard.ZstdCompressor().compress(records(parts[2]).encode()))
    texts = [docs[i] for i in parts[3]] + ['', None]  # empty and missing texts are no documents
    pq.write_table(pa.table({'id': list(range(len(texts))), 'text': texts}), root / 'd.parquet', row_group_size=7)
    seen += [docs[i] for i in np.concatenate(parts[:4])]
    (root / 'e.txt').write_text('<|endoftext|>'.join(docs[i] for i in parts[4]) + '<|endoftext|>\n  \n')
    seen += [docs[i].strip() for i in parts[4]]
    (root / 'f').mkdir()
    for i in parts[5]:
        (root / 'f' / f'{i:05d}.txt').write_text(docs[i])
    seen += [docs[i].strip() for i in parts[5]]
    return [d for d in seen if d]


def read_split(out_dir, split):
    meta = json.load(open(os.path.join(out_dir, 'meta.json')))
    return np.concatenate([np.fromfile(os.path.join(out_dir, s['file']), dtype=meta['dtype'])
                           for s in meta['shards'][split]])


def expected_streams(docs, encode, eot, val_fraction):
    streams = {'train': [], 'val': []}
    for doc in docs:
        split = 'val' if corpus.goes_to_val(doc.encode(), val_fraction) else 'train'
        streams[split] += list(encode(doc)) + [eot]
    return streams


def tree_bytes(directory):
    return {name: open(os.path.join(directory, name), 'rb').read() for name in sorted(os.listdir(directory))}


PREPARE = ['--tokenizer=char', '--doc_separator=<|endoftext|>', '--val_fraction=0.2']


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp('corpus')
    return root / 'in', write_corpus(root / 'in', documents(150))


def test_every_format_gives_exact_tokens_one_end_of_text_per_document(source, tmp_path):
    folder, docs = source
    # 1 KiB units cut every .jsonl and .txt file into ranges whose boundaries fall inside documents
    meta = corpus.prepare([str(folder)], str(tmp_path / 'd'), 'char', val_fraction=0.2, num_proc=1,
                          unit_mb=1 / 1024, shard_tokens=3000, doc_separator='<|endoftext|>')
    tok = load_tokenizer(tmp_path / 'd')
    assert tok.chars == ''.join(sorted(set(''.join(docs)))) and tok.eot == len(tok.chars) == meta['vocab_size'] - 1
    want = expected_streams(docs, tok.encode, tok.eot, 0.2)
    for split in ('train', 'val'):
        got = read_split(tmp_path / 'd', split)
        assert got.tolist() == want[split]
        assert meta[f'{split}_tokens'] == len(want[split]) == sum(s['tokens'] for s in meta['shards'][split])
        assert meta[f'{split}_documents'] == (got == tok.eot).sum()
    assert meta['train_documents'] + meta['val_documents'] == len(docs)
    assert meta['train_bytes'] + meta['val_bytes'] == sum(len(d.encode()) for d in docs)
    assert len(meta['shards']['train']) > 3 and 0.1 < meta['val_documents'] / len(docs) < 0.3
    assert not os.path.exists(tmp_path / 'd' / corpus.WORK)  # the resumable state is gone once complete
    # the stream does not depend on how the inputs were cut into units
    corpus.prepare([str(folder)], str(tmp_path / 'big_units'), 'char', val_fraction=0.2, num_proc=1,
                   shard_tokens=3000, doc_separator='<|endoftext|>')
    for split in ('train', 'val'):
        assert np.array_equal(read_split(tmp_path / 'big_units', split), read_split(tmp_path / 'd', split))


def test_output_is_byte_identical_for_one_and_two_processes(source, tmp_path):
    folder, _ = source
    for n in (1, 2):
        r = run('data/custom/prepare.py', f'--input={folder}', f'--out_dir={tmp_path / str(n)}', *PREPARE,
                '--unit_mb=0.002', '--shard_tokens=5000', f'--num_proc={n}', in_process=False)
        assert r.returncode == 0, r.stderr
        assert f'in {n} processes' in r.stdout
    assert tree_bytes(tmp_path / '1') == tree_bytes(tmp_path / '2')
    again = run('data/custom/prepare.py', f'--input={folder}', f'--out_dir={tmp_path / "1"}', *PREPARE,
                '--unit_mb=0.002', '--shard_tokens=5000')
    assert again.returncode == 0 and 'already prepared' in again.stdout


@pytest.mark.skipif(not HAS_TIKTOKEN_CACHE, reason='no tiktoken cache in ../shared/data (GPT-2 BPE needs it offline)')
def test_gpt2_counts_are_encode_ordinary_plus_one(source, tmp_path):
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(SHARED, 'tiktoken_cache'))
    folder, docs = source
    tok = Tokenizer({'type': 'tiktoken', 'name': 'gpt2'})
    meta = corpus.prepare([str(folder)], str(tmp_path / 'd'), tok, val_fraction=0.1, num_proc=1, unit_mb=0.01,
                          doc_separator='<|endoftext|>')
    assert meta['train_tokens'] + meta['val_tokens'] == sum(len(tok.enc.encode_ordinary(d)) + 1 for d in docs)
    want = expected_streams(docs, tok.enc.encode_ordinary, tok.eot, 0.1)
    assert read_split(tmp_path / 'd', 'val').tolist() == want['val']
    assert meta['dtype'] == 'uint16' and meta['eot_token'] == 50256
    # text that looks like a special token is ordinary text, as in encode_ordinary
    special = 'before <|endoftext|> after'
    for name in ('special.jsonl', 'special_val.jsonl'):
        (tmp_path / name).write_text(json.dumps({'text': special}) + '\n')
    corpus.prepare([str(tmp_path / 'special.jsonl')], str(tmp_path / 's'), tok,
                   val_inputs=[str(tmp_path / 'special_val.jsonl')], num_proc=1)
    assert read_split(tmp_path / 's', 'train').tolist() == tok.enc.encode_ordinary(special) + [tok.eot]


def test_explicit_val_files(source, tmp_path):
    folder, _ = source
    (tmp_path / 'val.jsonl').write_text(json.dumps({'body': 'held out text'}) + '\n')
    (tmp_path / 'train.jsonl').write_text(json.dumps({'body': 'training text'}) + '\n')
    meta = corpus.prepare([str(tmp_path / 'train.jsonl')], str(tmp_path / 'd'), 'char', num_proc=1,
                          val_inputs=[str(tmp_path / 'val.jsonl')], text_column='body')
    tok = load_tokenizer(tmp_path / 'd')
    assert tok.decode(read_split(tmp_path / 'd', 'val')) == 'held out text'
    assert tok.decode(read_split(tmp_path / 'd', 'train')) == 'training text'
    assert meta['val_documents'] == meta['train_documents'] == 1


def test_a_file_in_both_splits_is_refused(source, tmp_path):
    folder, _ = source
    (tmp_path / 'link.jsonl').symlink_to(folder / 'a.jsonl')
    for val in (folder / 'a.jsonl', tmp_path / 'link.jsonl', folder):  # a path, a link to it, a folder holding it
        r = run('data/custom/prepare.py', f'--input={folder}', f'--val_input={val}', f'--out_dir={tmp_path / "d"}',
                *PREPARE)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert 'both --input and --val_input' in r.stderr and 'a.jsonl' in r.stderr
    assert not os.path.exists(tmp_path / 'd' / 'meta.json')


def test_null_texts_are_skipped_and_counted_in_jsonl_and_parquet_alike(tmp_path):
    pa = pytest.importorskip('pyarrow', reason='pyarrow is not installed (pip install pyarrow)')
    import pyarrow.parquet as pq
    (tmp_path / 'a.jsonl').write_text(''.join(json.dumps({'text': t}) + '\n' for t in ['one', None, 'two', None]))
    pq.write_table(pa.table({'text': ['three', None, '']}), tmp_path / 'b.parquet')
    (tmp_path / 'v.jsonl').write_text(json.dumps({'text': 'held out'}) + '\n' + json.dumps({'text': None}) + '\n')
    meta = corpus.prepare([str(tmp_path / 'a.jsonl'), str(tmp_path / 'b.parquet')], str(tmp_path / 'd'), 'char',
                          val_inputs=[str(tmp_path / 'v.jsonl')], num_proc=1)
    tok = load_tokenizer(tmp_path / 'd')
    assert tok.decode(read_split(tmp_path / 'd', 'train')) == 'onetwothree' and meta['train_documents'] == 3
    assert meta['skipped_null_documents'] == 4 and meta['val_documents'] == 1
    (tmp_path / 'a.jsonl').write_text(json.dumps({'text': 5}) + '\n')  # a text that is not a string is an error
    r = run('data/custom/prepare.py', f'--input={tmp_path / "a.jsonl"}', f'--out_dir={tmp_path / "e"}',
            '--tokenizer=char', '--val_fraction=0.5')
    assert r.returncode == 2 and 'is not a string' in r.stderr


def test_kill_9_at_any_moment_then_rerun_gives_identical_bytes(source, tmp_path):
    folder, _ = source
    args = [f'--input={folder}', *PREPARE, '--unit_mb=0.0005', '--shard_tokens=4000', '--num_proc=2']
    reference = run('data/custom/prepare.py', *args, f'--out_dir={tmp_path / "ref"}')
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / 'killed'
    script = os.path.join(ROOT, 'data', 'custom', 'prepare.py')
    killed_midway = 0
    for attempt in range(4):  # kill once some units are done, then at random moments
        process = subprocess.Popen([sys.executable, script, *args, f'--out_dir={out}'], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        work = out / corpus.WORK
        while time.time() < deadline and process.poll() is None:
            done = len([n for n in os.listdir(work) if n.startswith('unit_') and n.endswith('.json')]) \
                if work.is_dir() else 0
            if (attempt == 0 and done >= 3) or (attempt > 0 and random.Random(attempt).random() < 0.05):
                break
            time.sleep(0.02)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            killed_midway += not (out / 'meta.json').exists()
        process.wait()
    assert killed_midway >= 1
    rerun = run('data/custom/prepare.py', *args, f'--out_dir={out}', in_process=False)
    assert rerun.returncode == 0, rerun.stderr
    time.sleep(0.5)  # workers orphaned by a kill notice it within one batch and leave nothing behind
    assert tree_bytes(out) == tree_bytes(tmp_path / 'ref')


def test_bad_input_is_one_line_and_keeps_the_dataset(source, tmp_path):
    import pyarrow as pa  # the source fixture skips without it
    import pyarrow.parquet as pq
    folder, _ = source

    def prepare(*args):
        r = run('data/custom/prepare.py', *args)
        assert r.returncode == 2 and 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        return r.stderr
    assert 'does not exist' in prepare(f'--input={tmp_path / "missing"}', f'--out_dir={tmp_path / "o"}')
    (tmp_path / 'x.csv').write_text('a,b')
    assert 'unsupported file type' in prepare(f'--input={tmp_path / "x.csv"}', f'--out_dir={tmp_path / "o"}')
    pq.write_table(pa.table({'content': ['a']}), tmp_path / 'p.parquet')
    assert "no column 'text'" in prepare(f'--input={tmp_path / "p.parquet"}', f'--out_dir={tmp_path / "o"}')
    (tmp_path / 'bad.jsonl').write_text('{"text": "fine"}\n{not json\n')
    assert 'invalid JSON' in prepare(f'--input={tmp_path / "bad.jsonl"}', f'--out_dir={tmp_path / "o"}',
                                     '--tokenizer=char')
    assert "--tokenizer 'bpe' is invalid" in prepare(f'--input={folder}', f'--out_dir={tmp_path / "o"}',
                                                     '--tokenizer=bpe')
    # a dataset is never replaced by one from other inputs unless asked
    ok = run('data/custom/prepare.py', f'--input={folder / "a.jsonl"}', f'--out_dir={tmp_path / "d"}', *PREPARE)
    assert ok.returncode == 0, ok.stderr
    before = tree_bytes(tmp_path / 'd')
    assert 'pass --overwrite' in prepare(f'--input={folder / "d.parquet"}', f'--out_dir={tmp_path / "d"}', *PREPARE)
    assert tree_bytes(tmp_path / 'd') == before
    ok = run('data/custom/prepare.py', f'--input={folder / "d.parquet"}', f'--out_dir={tmp_path / "d"}', *PREPARE,
             '--overwrite')
    assert ok.returncode == 0 and tree_bytes(tmp_path / 'd') != before


# ---- loader ----

@pytest.mark.parametrize('n', [1, 2, 3, 17, 1000, 4097])
def test_permutation_is_a_bijection(n):
    out = loader.permute(np.arange(n), n, key=12345)
    assert sorted(out.tolist()) == list(range(n))
    if n >= 1000:
        assert not np.array_equal(out, np.arange(n)) and abs(np.corrcoef(out, np.arange(n))[0, 1]) < 0.1
        assert not np.array_equal(out, loader.permute(np.arange(n), n, key=12346))


def counting_dataset(directory, sizes):
    """Shards holding 0, 1, 2, ... in order, so a window's tokens say where it came from."""
    os.makedirs(directory, exist_ok=True)
    shards, start = [], 0
    for i, size in enumerate(sizes):
        np.arange(start, start + size, dtype=np.uint32).tofile(os.path.join(directory, f'train_{i:06d}.bin'))
        shards.append({'file': f'train_{i:06d}.bin', 'tokens': size})
        start += size
    np.arange(50, dtype=np.uint32).tofile(os.path.join(directory, 'val_000000.bin'))
    meta = {'dtype': 'uint32', 'train_tokens': start, 'val_tokens': 50,
            'shards': {'train': shards, 'val': [{'file': 'val_000000.bin', 'tokens': 50}]}}
    return {split: loader.TokenStream(directory, split, meta) for split in ('train', 'val')}, meta


def test_epoch_sampling_visits_every_window_once_per_epoch(tmp_path):
    streams, meta = counting_dataset(tmp_path, [37, 5, 61, 19])  # 122 tokens, shards cut through windows
    block, batch, accumulation = 8, 3, 2
    batches = loader.Batches(streams, meta, block, batch, accumulation, seed=7, sampling='auto', device='cpu')
    assert batches.sampling == 'epoch' and batches.windows_per_epoch == (122 - 1) // block == 15
    starts = []
    for iteration in range(10):  # 10 x 2 x 3 = 60 windows = 4 epochs, batches straddling epochs included
        for micro_step in range(accumulation):
            x, y, _, _ = batches.train(iteration, micro_step)
            assert x.shape == (batch, block) and x.dtype == np.int64 or str(x.dtype) == 'torch.int64'
            assert (y[:, :-1] == x[:, 1:]).all() and (x[:, 1:] - x[:, :-1] == 1).all()  # contiguous across shards
            starts += x[:, 0].tolist()
    epochs = [starts[i:i + 15] for i in range(0, 60, 15)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(0, 15 * block, block))  # every window exactly once
    assert epochs[0] != epochs[1]  # a new order each epoch
    assert batches.epoch(10) == 4.0
    # a pure function of (seed, iteration, micro-step): again in any order, and on another "rank"
    again = loader.Batches(streams, meta, block, batch, accumulation, seed=7, sampling='epoch', device='cpu')
    assert again.train(3, 1)[0].tolist() == batches.train(3, 1)[0].tolist()
    assert again.prefetch(3, 1).result()[0].tolist() == batches.train(3, 1)[0].tolist()
    other = loader.Batches(streams, meta, block, batch, accumulation, seed=8, sampling='epoch', device='cpu')
    assert other.train(0, 0)[0].tolist() != batches.train(0, 0)[0].tolist()


def test_random_sampling_and_a_legacy_single_file_dataset(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / 'train.bin')
    np.arange(30, dtype=np.uint16).tofile(tmp_path / 'val.bin')
    meta = {'dtype': 'uint16', 'train_tokens': 100, 'val_tokens': 30}
    streams = {split: loader.TokenStream(str(tmp_path), split, meta) for split in ('train', 'val')}
    batches = loader.Batches(streams, meta, 10, 4, 1, seed=1, sampling='auto', device='cpu')
    assert batches.sampling == 'random'
    x, y, _, _ = batches.train(0, 0)
    assert (y == x + 1).all() and x.max() < 100
    vx, _, _ = batches.eval('val', 0)
    assert vx.max() < 30 and vx.tolist() == batches.eval('val', 0)[0].tolist()
    np.arange(90, dtype=np.uint16).tofile(tmp_path / 'train.bin')  # truncated: meta.json says 100
    with pytest.raises(ValueError, match='holds 90 tokens but meta.json says 100'):
        loader.TokenStream(str(tmp_path), 'train', meta)


@pytest.mark.parametrize('script', ['openwebtext', 'fineweb_edu', 'slimpajama_627b'])
def test_hub_corpora_offline_say_how_and_take_local_copies(script, source, tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')  # read when huggingface_hub is imported: a fresh interpreter
    r = run(f'data/{script}/prepare.py', f'--out_dir={tmp_path / "d"}', '--tokenizer=char', in_process=False)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and 'pass --input' in r.stderr, r.stderr
    folder, docs = source
    if script == 'slimpajama_627b':  # a local copy of the repository: train/ and validation/ folders
        (tmp_path / 'copy' / 'train').mkdir(parents=True)
        (tmp_path / 'copy' / 'validation').mkdir()
        (tmp_path / 'copy' / 'train' / 'c.jsonl.zst').write_bytes((folder / 'c.jsonl.zst').read_bytes())
        (tmp_path / 'copy' / 'validation' / 'b.jsonl.gz').write_bytes((folder / 'b.jsonl.gz').read_bytes())
        r = run(f'data/{script}/prepare.py', f'--input={tmp_path / "copy"}', f'--out_dir={tmp_path / "d"}',
                '--tokenizer=char', '--num_proc=1')
        assert r.returncode == 0, r.stderr
        meta = json.load(open(tmp_path / 'd' / 'meta.json'))
        assert meta['val_documents'] == 25 and meta['train_documents'] == 25  # 150 documents in 6 files
    else:
        r = run(f'data/{script}/prepare.py', f'--input={folder / "d.parquet"}', f'--out_dir={tmp_path / "d"}',
                '--tokenizer=char', '--val_fraction=0.2', '--num_proc=1')
        assert r.returncode == 0, r.stderr
        meta = json.load(open(tmp_path / 'd' / 'meta.json'))
        assert meta['train_documents'] + meta['val_documents'] == 25


@pytest.mark.skipif(not HAS_TIKTOKEN_CACHE, reason='no tiktoken cache in ../shared/data (GPT-2 BPE needs it offline)')
def test_hugging_face_tokenizer_folder_and_sentencepiece(source, tmp_path, monkeypatch):
    pytest.importorskip('transformers', reason='transformers is not installed (pip install transformers)')
    import convert
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', os.path.join(SHARED, 'tiktoken_cache'))
    folder, docs = source
    (tmp_path / 'hf').mkdir()
    convert.save_gpt2_tokenizer(str(tmp_path / 'hf'))
    for name, tokenizer in (('bpe', 'gpt2'), ('hf', str(tmp_path / 'hf'))):
        r = run('data/custom/prepare.py', f'--input={folder}', f'--out_dir={tmp_path / name}', '--num_proc=1',
                f'--tokenizer={tokenizer}', '--doc_separator=<|endoftext|>', '--val_fraction=0.2')
        assert r.returncode == 0, r.stderr
    assert load_tokenizer(tmp_path / 'hf').spec == {'type': 'huggingface', 'path': 'tokenizer'}
    for split in ('train', 'val'):  # the same BPE through transformers gives the same tokens
        assert np.array_equal(read_split(tmp_path / 'hf', split), read_split(tmp_path / 'bpe', split))
    r = run('data/custom/prepare.py', f'--input={folder}', f'--out_dir={tmp_path / "sp"}', '--num_proc=1',
            '--tokenizer=sentencepiece', '--vocab_size=300', '--doc_separator=<|endoftext|>', '--val_fraction=0.2')
    assert r.returncode == 0, r.stderr
    tok = load_tokenizer(tmp_path / 'sp')
    train = read_split(tmp_path / 'sp', 'train')
    assert tok.eot == 2 and (train == 2).sum() == json.load(open(tmp_path / 'sp' / 'meta.json'))['train_documents']

"""
The corpus engine behind every large dataset: documents from .txt, .jsonl, .jsonl.gz, .jsonl.zst and .parquet
files are tokenized by worker processes into token shards, in bounded memory, resumably.

    python data/custom/prepare.py --input corpus/ more/*.parquet --tokenizer gpt2 --out_dir data/mine

How it works:
- The inputs are cut into units of work whose boundaries depend only on the files: a byte range of a .jsonl or
  .txt file (a unit owns the lines, or the documents, that start inside its range), a row group of a .parquet
  file, a whole compressed .jsonl file, a run of small one-document .txt files.
- Each worker process streams its unit's documents, encodes about a megabyte of text at a time, appends exactly
  one end-of-text token after each document, and writes the unit's train and val tokens to part files. A unit is
  done once its record (a small json) exists; every write is a temp file renamed into place, so a prepare killed
  at any moment (kill -9 included) and run again with the same command redoes only the unfinished units.
- A document goes to val when a hash of its text falls under --val_fraction (the same document always lands in
  the same split, whatever the order or the number of processes), or when it comes from a --val_input file.
- Parts are then concatenated in unit order into shards of about --shard_tokens tokens (train_000000.bin, ...,
  val_000000.bin), and meta.json, written last, lists them with their token, document and byte counts.
  The output bytes depend only on the inputs and the options, never on --num_proc.
- A preparation is its fingerprint: the ordered plan of units (each file's real path, size and mtime, each unit's
  split), the tokenizer with every option that changes its tokens (a hash of --sp_model or of a Hugging Face
  folder), and the options. Only its own state is resumed (unit records, shards, tokenizer files). A rerun of a
  finished one says so and exits; another into the same out_dir is refused, writing nothing, unless --overwrite,
  which removes the old dataset (meta.json, shards, tokenizer files) once the new tokenizer is built.
"""
import argparse
import glob
import gzip
import hashlib
import importlib
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import threading
import time
from queue import SimpleQueue

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from errors import die  # noqa: E402
from files import atomic_write, write_json  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

SUFFIXES = ('.txt', '.jsonl', '.jsonl.gz', '.jsonl.zst', '.parquet')
BATCH_BYTES = 1 << 20  # text encoded per call: bounds the Python token lists a worker holds
WORK = '.prepare'  # the resumable state inside out_dir, removed once meta.json is written
DATASET_FILE = re.compile(r'(meta\.json|(train|val)(_\d+)?(\.docs)?\.bin)(\.\d+\.tmp)?$')  # what a preparation writes
SCAN_TOKENS = 1 << 24  # tokens read at a time when indexing document starts: bounds memory
SPAWN = multiprocessing.get_context('spawn')  # fork would copy the parent's memory and its threads' locks


class PrepareError(Exception):
    """A bad input or option: reported as one line, exit status 2."""


def need(module, package=None):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PrepareError(f"reading this input needs {package or module}: pip install {package or module}")


def kind_of(path):
    name = path.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix[1:]
    return None


def expand_inputs(patterns):
    """Files, folders (searched recursively) and globs -> a sorted, de-duplicated list of supported files."""
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise PrepareError(f"--input {pattern} does not exist")
        for match in matches:
            if os.path.isdir(match):
                found = sorted(os.path.join(d, n) for d, _, names in os.walk(match) for n in names if kind_of(n))
                if not found:
                    raise PrepareError(f"no {', '.join(SUFFIXES)} files under {match}")
                files += found
            elif kind_of(match):
                files.append(match)
            else:
                raise PrepareError(f"{match}: unsupported file type; allowed: {', '.join(SUFFIXES)}")
    seen = set()
    return [f for f in files if not (os.path.abspath(f) in seen or seen.add(os.path.abspath(f)))]


# ---- planning: units of work that depend only on the files ----

def plan_units(files, split, options):
    """Units for one list of files; split is 'auto' (by document hash), 'train' or 'val' (every document)."""
    unit_bytes = int(options['unit_mb'] * 2 ** 20)
    units, small, small_bytes = [], [], 0

    def flush_small():
        nonlocal small_bytes
        if small:
            units.append({'kind': 'txt_files', 'files': list(small), 'split': split, 'bytes': small_bytes})
            small.clear()
            small_bytes = 0
    for path in files:
        kind, size = kind_of(path), os.path.getsize(path)
        if kind == 'txt' and options['doc_separator'] is None:  # a file is a document: group small ones
            small.append(path)
            small_bytes += size
            if small_bytes >= unit_bytes:
                flush_small()
            continue
        flush_small()
        if kind in ('jsonl', 'txt'):
            for start in range(0, max(size, 1), unit_bytes):
                units.append({'kind': kind, 'file': path, 'start': start, 'end': min(size, start + unit_bytes),
                              'split': split, 'bytes': min(size, start + unit_bytes) - start})
        elif kind == 'parquet':
            pq = need('pyarrow.parquet', 'pyarrow')
            try:
                metadata = pq.ParquetFile(path).metadata
            except Exception as e:
                raise PrepareError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})")
            columns = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
            if options['text_column'] not in columns:
                raise PrepareError(f"{path} has no column {options['text_column']!r} (--text_column); "
                                   f"its columns: {', '.join(columns)}")
            column = columns.index(options['text_column'])
            for group in range(metadata.num_row_groups):
                rows = metadata.row_group(group).num_rows
                size = metadata.row_group(group).column(column).total_uncompressed_size
                pieces = max(1, min(rows, round(size / unit_bytes)))  # a large row group is cut into row ranges
                for piece in range(pieces):
                    units.append({'kind': 'parquet', 'file': path, 'row_group': group, 'split': split,
                                  'rows': [rows * piece // pieces, rows * (piece + 1) // pieces],
                                  'bytes': size // pieces})
        else:  # compressed jsonl cannot be entered in the middle: the whole file is one unit
            units.append({'kind': kind, 'file': path, 'split': split, 'bytes': size})
    flush_small()
    return units


# ---- reading: each unit streams its documents ----

def find_from(f, needle, position):
    """Offset of the first occurrence of needle at or after position, or None."""
    f.seek(position)
    carry = b''
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            return None
        data = carry + chunk
        at = data.find(needle)
        if at >= 0:
            return position - len(carry) + at
        carry = data[-(len(needle) - 1):] if len(needle) > 1 else b''
        position += len(chunk)


def owned_lines(path, start, end):
    """The lines of a file that start in [start, end)."""
    with open(path, 'rb') as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # the line holding byte start-1 belongs to the previous unit
        position = f.tell()
        while position < end:
            line = f.readline()
            if not line:
                return
            position += len(line)
            yield line


def compressed_lines(path, kind):
    if kind == 'jsonl.gz':
        with gzip.open(path, 'rb') as f:
            yield from f
    else:
        zstandard = need('zstandard')
        with open(path, 'rb') as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            yield from io.BufferedReader(reader)


def json_texts(lines, path, column):
    """The column's text of each JSON line (None for a null, as parquet gives); 1024 lines are parsed in one call
    (per-line calls cost more)."""
    def check(line):  # the slow path, only to name the bad line
        try:
            text = json.loads(line)[column]
        except (ValueError, KeyError, TypeError) as e:
            what = f"no field {column!r} (--text_column)" if isinstance(e, (KeyError, TypeError)) else 'invalid JSON'
            raise PrepareError(f"{path}: a line has {what}: {line[:80]!r}")
        if not isinstance(text, str) and text is not None:
            raise PrepareError(f"{path}: field {column!r} is not a string: {line[:80]!r}")
        return text

    def parse(chunk):
        try:
            texts = [record[column] for record in json.loads(b'[' + b','.join(chunk) + b']')]
            if all(type(text) is str or text is None for text in texts):
                return texts
        except (ValueError, KeyError, TypeError):
            pass
        return [check(line) for line in chunk]
    chunk = []
    for line in lines:
        if line.strip():
            chunk.append(line)
            if len(chunk) == 1024:
                yield from parse(chunk)
                chunk = []
    if chunk:
        yield from parse(chunk)


def separated_texts(path, start, end, separator):
    """Documents between separators that start in [start, end), stripped of surrounding whitespace.

    A unit's first document begins after the first separator that ends at or after start, its last one ends at
    the first separator that ends at or after end: the next unit finds that same separator, so none is lost."""
    sep = separator.encode('utf-8')
    with open(path, 'rb') as f:
        first = 0
        if start > 0:
            found = find_from(f, sep, start - len(sep))
            if found is None or found + len(sep) >= end:
                return  # no document starts in this range
            first = found + len(sep)
        stop = find_from(f, sep, max(first, end - len(sep)))
        f.seek(first)
        data = f.read() if stop is None else f.read(stop - first)
    for document in data.decode('utf-8', errors='replace').split(separator):
        yield document.strip()


def unit_texts(unit, options):
    """The texts of a unit's documents, in order; None for a null text."""
    kind = unit['kind']
    if kind == 'txt_files':
        for path in unit['files']:
            with open(path, 'rb') as f:
                yield f.read().decode('utf-8', errors='replace').strip()
    elif kind == 'txt':
        yield from separated_texts(unit['file'], unit['start'], unit['end'], options['doc_separator'])
    elif kind == 'jsonl':
        yield from json_texts(owned_lines(unit['file'], unit['start'], unit['end']), unit['file'],
                              options['text_column'])
    elif kind in ('jsonl.gz', 'jsonl.zst'):
        yield from json_texts(compressed_lines(unit['file'], kind), unit['file'], options['text_column'])
    else:
        pq = need('pyarrow.parquet', 'pyarrow')
        column = pq.ParquetFile(unit['file']).read_row_group(unit['row_group'], columns=[options['text_column']])[0]
        first, last = unit['rows']
        for start in range(first, last, 1024):
            for text in column.slice(start, min(1024, last - start)).to_pylist():
                yield text


def goes_to_val(data, fraction):
    """A document's split from a hash of its bytes: stable across runs, orders and process counts."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), 'little') < fraction * 2 ** 64


# ---- workers ----
_worker = {}


def init_worker(spec, data_dir, options, progress_queue):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    if spec is not None:
        _worker.update(tokenizer=Tokenizer(spec, data_dir), options=options, queue=progress_queue,
                       parent=os.getppid())


def read_json(path):
    """The object a json file holds, or None when there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def batches_of_text(texts, size):
    """Non-empty texts grouped into lists of about size bytes (counted in characters: cheap, close enough)."""
    batch, length = [], 0
    for text in texts:
        if text:
            batch.append(text)
            length += len(text)
            if length >= size:
                yield batch
                batch, length = [], 0
    if batch:
        yield batch


def process_unit(job):
    """Tokenize one unit into its part files; returns (index, record). Runs in a worker process."""
    index, unit, work_dir = job
    tokenizer, options, queue = _worker['tokenizer'], _worker['options'], _worker['queue']
    parts = {split: os.path.join(work_dir, f'unit_{index:07d}.{split}.bin') for split in ('train', 'val')}
    counts = {split: {'tokens': 0, 'documents': 0, 'bytes': 0} for split in parts}
    content, nulls = hashlib.sha256(), [0]

    def present(texts):  # a null text is no document, only counted
        for text in texts:
            if text is None:
                nulls[0] += 1
            else:
                yield text

    def tokenize(out):
        for texts in batches_of_text(present(unit_texts(unit, options)), BATCH_BYTES):
            data = [text.encode('utf-8') for text in texts]
            for d in data:
                content.update(d)
            if unit['split'] == 'auto':
                val = [goes_to_val(d, options['val_fraction']) for d in data]
                by_split = {'train': [i for i, v in enumerate(val) if not v], 'val': [i for i, v in enumerate(val) if v]}
            else:
                by_split = {unit['split']: range(len(texts))}
            batch_tokens = 0
            for split, chosen in by_split.items():
                if chosen:
                    ids = tokenizer.encode_documents([texts[i] for i in chosen])
                    ids.tofile(out[split])
                    counts[split]['tokens'] += len(ids)
                    batch_tokens += len(ids)
                    counts[split]['documents'] += len(chosen)
                    counts[split]['bytes'] += sum(len(data[i]) for i in chosen)
            if queue is not None:
                queue.put((0, batch_tokens))
            if _worker['parent'] is not None and os.getppid() != _worker['parent']:
                os._exit(1)  # the prepare that started this worker was killed: stop quietly
    # both part files at once, each written to a temp file and renamed into place
    atomic_write(parts['train'],
                 lambda train: atomic_write(parts['val'], lambda val: tokenize({'train': train, 'val': val})))
    if queue is not None:
        queue.put((unit['bytes'], 0))
    record = {**counts, 'sha256': content.hexdigest(), 'null': nulls[0]}
    write_json(os.path.join(work_dir, f'unit_{index:07d}.json'), record)  # the unit is done once this exists
    return index, record


def collect_characters(job):
    """The set of characters of one unit's documents (the char tokenizer's first pass)."""
    index, unit, options = job
    chars = set()
    for text in unit_texts(unit, options):
        chars.update(text or '')
    return ''.join(sorted(chars))


# ---- the whole prepare ----

def fingerprint(units, tokenizer, options):
    """What the output depends on: the ordered plan of units (kind, range, split, and each file's real path, size
    and mtime), the tokenizer's identity and the options. Order and splits count: unit records are reused by
    their index."""
    plan = []
    for unit in units:
        files = unit.get('files') or [unit['file']]
        plan.append([{k: v for k, v in unit.items() if k not in ('file', 'files')},
                     [(os.path.realpath(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files]])
    text = json.dumps([plan, tokenizer, {k: v for k, v in options.items() if k != 'dtype'}], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def folder_files(path):
    """A Hugging Face tokenizer folder's files: those at its top, less a dataset's own (it may be out_dir itself)."""
    return sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)) and not DATASET_FILE.match(n))


def content_sha256(path):
    """A hash of a file, or of a tokenizer folder's files (names and bytes)."""
    digest = hashlib.sha256()
    for name in [path] if os.path.isfile(path) else [os.path.join(path, n) for n in folder_files(path)]:
        digest.update(os.path.basename(name).encode() + b'\0')
        with open(name, 'rb') as f:
            digest.update(f.read())  # tokenizer files: a few MB at most
    return digest.hexdigest()


def tokenizer_identity(request):
    """The tokenizer's part of the fingerprint, known before anything is built or copied: its kind and options,
    and a hash of the model file or folder it comes from."""
    if request == 'char':
        return {'type': 'char'}  # the vocabulary follows from the inputs
    if isinstance(request, Tokenizer):
        return {**request.spec, 'vocab_size': request.vocab_size}
    identity = {k: v for k, v in request.items() if k not in ('model', 'path')}
    if request.get('model') or request.get('path'):
        identity['sha256'] = content_sha256(request.get('model') or request['path'])
    return identity


FILE_SPECS = {'sentencepiece': {'type': 'sentencepiece', 'model': 'tokenizer.model'},
              'huggingface': {'type': 'huggingface', 'path': 'tokenizer'}}  # names in out_dir, as meta.json says


def build_tokenizer(request, directory, units, options, num_proc):
    """The Tokenizer of a request, its files (a SentencePiece model, a Hugging Face folder) written into directory
    under the names they keep in out_dir."""
    if request == 'char':
        return Tokenizer(char_spec(units, options, num_proc))
    if isinstance(request, Tokenizer):
        return request
    os.makedirs(directory, exist_ok=True)
    spec = FILE_SPECS[request['type']]
    if request['type'] == 'sentencepiece' and 'model' not in request:
        from common import train_sentencepiece
        sample = sample_text([u for u in units if u['split'] != 'val'], options, request['sample_mb'])
        return train_sentencepiece(sample, directory, request['vocab_size'])
    if request['type'] == 'sentencepiece':
        shutil.copyfile(request['model'], os.path.join(directory, spec['model']))
    else:
        os.makedirs(os.path.join(directory, spec['path']))
        for name in folder_files(request['path']):
            shutil.copyfile(os.path.join(request['path'], name), os.path.join(directory, spec['path'], name))
    try:
        return Tokenizer(spec, directory)
    except ImportError:
        raise PrepareError("a Hugging Face tokenizer folder needs transformers: pip install transformers")
    except Exception as e:
        raise PrepareError(f"{request.get('model') or request.get('path')}: not a {request['type']} tokenizer "
                           f"({str(e).splitlines()[0] if str(e) else type(e).__name__})")


def tokenizer_files(spec):
    """The names in out_dir of a tokenizer spec's files (a trained SentencePiece model has its .vocab beside it)."""
    if spec.get('model'):
        return [spec['model'], os.path.splitext(spec['model'])[0] + '.vocab']
    return [spec['path']] if spec.get('path') else []


def start(request, out_dir, plan, units, options, num_proc, replacing=None):
    """Begin an accepted preparation: its tokenizer is built aside in .prepare/ and moved into out_dir once it
    works. With --overwrite (replacing: the old tokenizer's file names) the old dataset goes first: meta.json, its
    shards, its tokenizer files. plan.json, written last, marks out_dir as this preparation's."""
    work_dir = os.path.join(out_dir, WORK)
    staging = os.path.join(work_dir, 'tokenizer.new')
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(work_dir, exist_ok=True)
    tokenizer = build_tokenizer(request, staging, units, options, num_proc)
    if tokenizer.eot is None:
        raise PrepareError(f"tokenizer {tokenizer.spec['type']} has no end-of-text token to end documents with")
    if replacing is not None:
        for name in sorted(os.listdir(out_dir), key=lambda n: n != 'meta.json'):  # meta.json first
            path = os.path.join(out_dir, name)
            if os.path.isdir(path) and name in replacing:
                shutil.rmtree(path)
            elif DATASET_FILE.match(name) or name in replacing:
                os.remove(path)
    for name in os.listdir(staging) if os.path.isdir(staging) else []:
        target = os.path.join(out_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    shutil.rmtree(staging, ignore_errors=True)
    write_json(os.path.join(work_dir, 'plan.json'), plan)
    return tokenizer


def resumed_tokenizer(request, out_dir, units, options, num_proc):
    """The Tokenizer an unfinished preparation built, its files already in out_dir; None if they are gone."""
    if request == 'char' or isinstance(request, Tokenizer):
        return build_tokenizer(request, None, units, options, num_proc)
    spec = FILE_SPECS[request['type']]
    if not os.path.exists(os.path.join(out_dir, spec.get('model') or spec['path'])):
        return None
    print(f"resuming with the {request['type']} tokenizer this preparation built before")
    return Tokenizer(spec, out_dir)


def run_pool(function, jobs, num_proc, initargs=None):
    """Results of function over jobs (unordered) in num_proc worker processes (in this one for num_proc=1)."""
    if num_proc == 1:
        if initargs is not None:
            _worker.update(tokenizer=Tokenizer(*initargs[:2]), options=initargs[2], queue=initargs[3], parent=None)
        yield from map(function, jobs)
        return
    pool = SPAWN.Pool(num_proc, initializer=init_worker, initargs=initargs or (None, None, None, None))
    try:
        yield from pool.imap_unordered(function, jobs, chunksize=1)
        pool.close()
        pool.join()  # workers leave on their own, their last progress messages sent
    finally:
        pool.terminate()


def progress_bar(total, initial, description):
    """A tqdm bar over input bytes (MB/s and ETA) with tokens/s, or None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        print("(pip install tqdm for a progress bar)")
        return None
    return tqdm(total=total, initial=initial, unit='B', unit_scale=True, unit_divisor=1024, desc=description,
                smoothing=0.1, mininterval=1.0, dynamic_ncols=True)


def prepare(inputs, out_dir, tokenizer, val_inputs=(), val_fraction=0.0005, text_column='text',
            doc_separator=None, num_proc=None, unit_mb=8, shard_tokens=100_000_000, overwrite=False,
            source=None):
    """Tokenize a corpus into out_dir; returns meta. tokenizer is a Tokenizer that needs no files (GPT-2), 'char'
    (vocabulary from the corpus), or a request of tokenizer_request's. Raises PrepareError for bad input."""
    num_proc = num_proc or os.cpu_count() or 1
    if num_proc < 1:
        raise PrepareError(f"--num_proc={num_proc} must be at least 1")
    if not 0 <= val_fraction < 1:
        raise PrepareError(f"--val_fraction={val_fraction} must be in [0, 1)")
    if unit_mb <= 0 or shard_tokens < 1:
        raise PrepareError("--unit_mb and --shard_tokens must be positive")
    options = {'val_fraction': val_fraction, 'text_column': text_column, 'doc_separator': doc_separator or None,
               'unit_mb': unit_mb, 'shard_tokens': shard_tokens}
    train_files = expand_inputs(inputs)
    val_files = expand_inputs(val_inputs) if val_inputs else []
    in_train = {os.path.realpath(f) for f in train_files}
    both = [os.path.realpath(f) for f in val_files if os.path.realpath(f) in in_train]
    if both:  # its documents would train and be held out at once
        which = f"{both[0]} is" if len(both) == 1 else f"{both[0]} and {len(both) - 1} more files are"
        raise PrepareError(f"{which} in both --input and --val_input; give each file one split")
    if val_files:
        options['val_fraction'] = 0.0  # explicit val files: every other document trains
    elif val_fraction == 0:
        raise PrepareError("no val split: pass --val_fraction > 0 or --val_input files")
    units = plan_units(train_files, 'auto' if not val_files else 'train', options) + plan_units(val_files, 'val', options)
    os.makedirs(out_dir, exist_ok=True)
    work_dir = os.path.join(out_dir, WORK)
    identity = tokenizer_identity(tokenizer)
    key = fingerprint(units, identity, options)

    meta_path, plan_path = os.path.join(out_dir, 'meta.json'), os.path.join(work_dir, 'plan.json')
    old, plan = read_json(meta_path), read_json(plan_path)
    stale = set()  # tokenizer files of what --overwrite replaces
    if old is not None:
        if old.get('fingerprint') == key:
            shutil.rmtree(work_dir, ignore_errors=True)  # a run killed after meta.json, before cleaning up
            print(f"{out_dir} is already prepared from these inputs ({old['train_tokens']:,} train tokens)")
            return old
        if not overwrite:
            raise PrepareError(f"{out_dir} already holds a dataset prepared from other inputs or options; "
                               f"pass --overwrite to replace it, or choose another --out_dir")
        stale.update(tokenizer_files(old.get('tokenizer', {})))
    if plan is not None and plan['fingerprint'] != key:
        if not overwrite:
            raise PrepareError(f"{work_dir} holds an unfinished prepare of other inputs or options; "
                               f"pass --overwrite to discard it")
        stale.update(tokenizer_files(FILE_SPECS.get(plan.get('tokenizer', {}).get('type'), {})))
        shutil.rmtree(work_dir)
        plan = None
    request = tokenizer
    tokenizer = resumed_tokenizer(request, out_dir, units, options, num_proc) if plan is not None else None
    if tokenizer is None:
        shutil.rmtree(work_dir, ignore_errors=True)  # units tokenized by a tokenizer that is gone are no use
        tokenizer = start(request, out_dir, {'fingerprint': key, 'units': len(units), 'tokenizer': identity},
                          units, options, num_proc, stale if overwrite else None)
    spec = tokenizer.spec
    options['dtype'] = np.dtype(np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32).name

    records = {i: read_json(os.path.join(work_dir, f'unit_{i:07d}.json')) for i in range(len(units))}
    records = {i: r for i, r in records.items() if r is not None}
    todo = [(i, u, work_dir) for i, u in enumerate(units) if i not in records]
    total = sum(u['bytes'] for u in units)
    done_bytes = sum(units[i]['bytes'] for i in records)
    if records:
        print(f"resuming: {len(records)} of {len(units)} units already done")
    print(f"tokenizing {len(train_files) + len(val_files)} files ({total / 2 ** 20:,.1f} MiB in {len(units)} units) "
          f"with {spec.get('name', spec['type'])} in {min(num_proc, max(1, len(todo)))} processes")
    bar = progress_bar(total, done_bytes, 'tokenizing') if todo else None
    queue, reader, started = None, None, time.time()
    if bar is not None:
        queue = SPAWN.Queue() if num_proc > 1 else SimpleQueue()
        tokens = [0]

        def follow():
            while True:
                item = queue.get()
                if item is None:
                    return
                bar.update(item[0])
                tokens[0] += item[1]
                bar.set_postfix_str(f"{tokens[0] / max(1e-9, time.time() - started):,.0f} tok/s", refresh=False)
        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
    try:
        for index, record in run_pool(process_unit, todo, min(num_proc, max(1, len(todo))),
                                      (spec, out_dir, options, queue)):
            records[index] = record
    finally:
        if reader is not None:
            queue.put(None)
            reader.join()
            bar.close()
    meta = write_shards(units, records, work_dir, out_dir, tokenizer, options)
    meta.update({'fingerprint': key, 'source': source or [*inputs, *val_inputs],
                 'prepare': {**{k: v for k, v in options.items() if k != 'dtype'}, 'tokenizer': identity}})
    write_json(meta_path, meta)  # its presence means the dataset is complete
    shutil.rmtree(work_dir, ignore_errors=True)
    elapsed = time.time() - started
    print(f"{out_dir}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens from "
          f"{meta['train_documents'] + meta['val_documents']:,} documents in {len(meta['shards']['train'])} + "
          f"{len(meta['shards']['val'])} shards ({elapsed:.1f} s)")
    return meta


def char_spec(units, options, num_proc):
    """The char tokenizer's vocabulary: every character of the corpus (a first, parallel pass), plus end-of-text."""
    chars = set()
    for found in run_pool(collect_characters, [(i, u, options) for i, u in enumerate(units)],
                          min(num_proc, max(1, len(units)))):
        chars.update(found)
    return {'type': 'char', 'chars': ''.join(sorted(chars)), 'end_of_text': True}


def write_shards(units, records, work_dir, out_dir, tokenizer, options):
    """Concatenate the unit parts, in unit order, into shards of about shard_tokens tokens; returns meta."""
    itemsize = np.dtype(options['dtype']).itemsize
    shards = {}
    for split in ('train', 'val'):
        groups, current = [], []
        for index in range(len(units)):
            if records[index][split]['tokens']:
                current.append(index)
                if sum(records[i][split]['tokens'] for i in current) >= options['shard_tokens']:
                    groups.append(current)
                    current = []
        if current:
            groups.append(current)
        if not groups:
            documents = sum(r[s]['documents'] for r in records.values() for s in ('train', 'val'))
            raise PrepareError(f"the {split} split is empty" + (
                f": no document of {documents:,} was drawn by --val_fraction={options['val_fraction']}; raise it, "
                f"or pass --val_input" if split == 'val' else ''))
        shards[split] = []
        for number, group in enumerate(groups):
            name = f'{split}_{number:06d}.bin'
            path = os.path.join(out_dir, name)
            counts = {k: sum(records[i][split][k] for i in group) for k in ('tokens', 'documents', 'bytes')}
            # a shard is kept only if this preparation wrote it (a record in .prepare/), as a resume after a kill
            done = os.path.join(work_dir, f'{name}.json')
            if not (read_json(done) == {'units': group, **counts} and os.path.isfile(path)
                    and os.path.getsize(path) == counts['tokens'] * itemsize):

                def join(out, group=group, split=split):
                    for i in group:
                        with open(os.path.join(work_dir, f'unit_{i:07d}.{split}.bin'), 'rb') as part:
                            shutil.copyfileobj(part, out, 1 << 24)
                atomic_write(path, join)
            index = document_index_name(name)
            if not (read_json(done) == {'units': group, **counts} and os.path.isfile(os.path.join(out_dir, index))):
                write_document_index(path, os.path.join(out_dir, index), options['dtype'], tokenizer.eot)
                write_json(done, {'units': group, **counts})
            shards[split].append({'file': name, **counts})
    totals = {f'{split}_{k}': sum(s[k] for s in shards[split]) for split in shards for k in ('tokens', 'documents', 'bytes')}
    # a hash of every document's text in order, from the units' own hashes
    source_sha256 = hashlib.sha256(''.join(records[i]['sha256'] for i in range(len(units))).encode()).hexdigest()
    index = {'end_token': tokenizer.eot, **{s: [document_index_name(f['file']) for f in shards[s]] for s in shards}}
    return {'tokenizer': tokenizer.spec, 'vocab_size': tokenizer.vocab_size, 'dtype': options['dtype'],
            'eot_token': tokenizer.eot, **totals, 'skipped_null_documents': sum(r['null'] for r in records.values()),
            'source_sha256': source_sha256, 'shards': shards, 'document_index': index}


# ---- the document-start index: where each document begins in a shard ----

def document_index_name(shard_name):
    return shard_name[:-len('.bin')] + '.docs.bin'


def write_document_index(shard_path, index_path, dtype, end_token):
    """The offsets (int64) in a token file at which a document starts: 0 and every position after an end_token
    (end_token None: the file is one document). Scanned SCAN_TOKENS at a time; written atomically."""
    tokens = np.memmap(shard_path, dtype=dtype, mode='r') if os.path.getsize(shard_path) else np.zeros(0, dtype)

    def scan(out):
        np.zeros(1, dtype=np.int64).tofile(out)
        for first in range(0, len(tokens), SCAN_TOKENS) if end_token is not None else ():
            ends = np.flatnonzero(tokens[first:first + SCAN_TOKENS] == end_token) + first + 1
            ends[ends < len(tokens)].astype(np.int64).tofile(out)  # the last document ends the file: no start after it
    atomic_write(index_path, scan)


def add_document_index(data_dir):
    """Write the document-start index beside each token file of a dataset prepared without one, and reference it
    in meta.json. Documents end at the end-of-text token meta.json names (eot_token), or the tokenizer's; a
    dataset without one (a character vocabulary with no end-of-text) is one document per split."""
    meta_path = os.path.join(data_dir, 'meta.json')
    meta = read_json(meta_path)
    if meta is None:
        raise PrepareError(f"{meta_path} is missing: {data_dir} is not a prepared dataset")
    end_token = meta['eot_token'] if 'eot_token' in meta else Tokenizer(meta['tokenizer'], data_dir).eot
    index = {'end_token': end_token}
    for split in ('train', 'val'):
        names = [s['file'] for s in meta.get('shards', {}).get(split, [])] or [f'{split}.bin']
        for name in names:
            write_document_index(os.path.join(data_dir, name), os.path.join(data_dir, document_index_name(name)),
                                 meta['dtype'], end_token)
        index[split] = [document_index_name(n) for n in names]
    meta['document_index'] = index
    write_json(meta_path, meta)
    return meta


def add_arguments(parser, default_out_dir=None, need_input=True):
    """The engine's command-line options, shared by every corpus script."""
    parser.add_argument('--input', nargs='+', required=need_input, default=None,
                        help=f"files, folders or globs of {', '.join(SUFFIXES)}")
    parser.add_argument('--val_input', nargs='+', default=[], help='files whose documents form the val split '
                        '(instead of a --val_fraction of the documents)')
    parser.add_argument('--out_dir', default=default_out_dir, required=default_out_dir is None)
    parser.add_argument('--tokenizer', default='gpt2',
                        help='gpt2 | char | sentencepiece | a Hugging Face tokenizer folder')
    parser.add_argument('--sp_model', help='an existing SentencePiece .model (else one is trained on a sample)')
    parser.add_argument('--vocab_size', type=int, default=32000, help='for a newly trained SentencePiece model')
    parser.add_argument('--sp_sample_mb', type=float, default=100, help='MiB of text to train SentencePiece on')
    parser.add_argument('--num_proc', type=int, default=os.cpu_count() or 1, help='worker processes (all cores)')
    parser.add_argument('--val_fraction', type=float, default=0.0005,
                        help='share of documents (by a hash of their text) that go to val')
    parser.add_argument('--text_column', default='text', help='the text field of .jsonl and .parquet records')
    parser.add_argument('--doc_separator', default=None,
                        help="split .txt files into documents at this string (e.g. '<|endoftext|>'); "
                             "default: each .txt file is one document")
    parser.add_argument('--unit_mb', type=float, default=8, help='MiB per unit of work (the resume granularity)')
    parser.add_argument('--shard_tokens', type=int, default=100_000_000, help='tokens per output shard (about)')
    parser.add_argument('--overwrite', action='store_true', help='replace a dataset prepared from other inputs')
    return parser


def tokenizer_request(args):
    """What --tokenizer asks for, checked but not built: a Tokenizer (GPT-2), 'char', or a SentencePiece model to
    copy or train, or a Hugging Face folder to copy (prepare builds these once the preparation is accepted)."""
    name = args.tokenizer
    if name == 'char':
        return 'char'
    if name == 'gpt2':
        try:
            return Tokenizer({'type': 'tiktoken', 'name': 'gpt2'})
        except Exception as e:
            raise PrepareError(f"could not load the GPT-2 BPE ({type(e).__name__}); offline, set "
                               f"TIKTOKEN_CACHE_DIR to a tiktoken cache")
    if name == 'sentencepiece':
        if args.sp_model:
            if not os.path.isfile(args.sp_model):
                raise PrepareError(f"--sp_model {args.sp_model} does not exist")
            return {'type': 'sentencepiece', 'model': args.sp_model}
        return {'type': 'sentencepiece', 'vocab_size': args.vocab_size, 'sample_mb': args.sp_sample_mb}
    if os.path.isdir(name):
        return {'type': 'huggingface', 'path': name}
    raise PrepareError(f"--tokenizer {name!r} is invalid; allowed: gpt2, char, sentencepiece, or a Hugging Face "
                       f"tokenizer folder")


def sample_text(units, options, sample_mb):
    """The first sample_mb MiB of documents, in unit order: what a new SentencePiece model learns from."""
    limit, texts, size = sample_mb * 2 ** 20, [], 0
    for unit in units:
        for text in unit_texts(unit, options):
            text = text or ''  # a null joins the sample as an empty text, as it always has from parquet
            texts.append(text)
            size += len(text)
            if size >= limit:
                return '\n'.join(texts)
    return '\n'.join(texts)


def download(repo, patterns, local_dir, revision=None, max_files=None):
    """Files of a Hugging Face dataset repository matching patterns, downloaded into local_dir (a file already
    there is skipped, an interrupted one resumes); returns their local paths."""
    import fnmatch
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError:
        raise PrepareError("downloading needs huggingface_hub (pip install huggingface_hub); or pass --input "
                           "with local copies of the files")
    try:
        names = sorted(f for f in HfApi().list_repo_files(repo, repo_type='dataset', revision=revision)
                       if any(fnmatch.fnmatch(f, p) for p in patterns))
    except Exception as e:
        raise PrepareError(f"could not list {repo} on the Hugging Face hub ({type(e).__name__}); offline, pass "
                           f"--input with local copies of its files")
    if not names:
        raise PrepareError(f"no files in {repo} match {', '.join(patterns)}")
    names = names[:max_files] if max_files else names
    print(f"downloading {len(names)} files of {repo} into {local_dir}")
    paths = []
    for name in names:
        try:
            paths.append(hf_hub_download(repo, name, repo_type='dataset', revision=revision, local_dir=local_dir))
        except Exception as e:
            raise PrepareError(f"could not download {name} from {repo} ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}); run again to resume")
    return paths


def split_folders(args):
    """A single --input folder holding train/ and val/ (or validation/) subfolders gives both splits."""
    if args.input and len(args.input) == 1 and not args.val_input and os.path.isdir(args.input[0]):
        for val in ('val', 'validation'):
            if all(os.path.isdir(os.path.join(args.input[0], d)) for d in ('train', val)):
                args.input, args.val_input = [os.path.join(args.input[0], 'train')], [os.path.join(args.input[0], val)]
                return


def hub_arguments(parser, default_out_dir):
    """Options of the scripts that fetch a corpus from the hub: local copies, or where and how much to fetch."""
    add_arguments(parser, default_out_dir, need_input=False)
    parser.add_argument('--download_dir', default=os.path.join(default_out_dir, 'source'),
                        help='where downloaded files go (kept: a rerun skips them)')
    parser.add_argument('--max_files', type=int, default=None, help='fetch only the first N files (a smaller corpus)')
    return parser


def main(args, source=None, fetch=None):
    """Run the engine from parsed arguments; fetch() gives (inputs, val_inputs) when --input is absent.
    Bad input ends in one line and exit status 2."""
    try:
        if not args.input:
            if fetch is None:
                raise PrepareError("this needs --input: files, folders or globs of "
                                   f"{', '.join(SUFFIXES)}")
            args.input, args.val_input = fetch()
        split_folders(args)
        return prepare(args.input, args.out_dir, tokenizer_request(args), val_inputs=args.val_input,
                       val_fraction=args.val_fraction, text_column=args.text_column,
                       doc_separator=args.doc_separator, num_proc=args.num_proc, unit_mb=args.unit_mb,
                       shard_tokens=args.shard_tokens, overwrite=args.overwrite, source=source)
    except PrepareError as e:
        die(str(e))
    except KeyboardInterrupt:
        die("interrupted; run the same command again to continue where it stopped")


if __name__ == '__main__':
    main(add_arguments(argparse.ArgumentParser(description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)).parse_args())

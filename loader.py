"""
Training batches from a prepared dataset: its token shards read as one stream through memmaps, each batch a pure
function of (seed, iteration, global micro-step), and a background thread that reads the next micro-batch while
the device computes.

    sampling = 'random'  windows starting anywhere, drawn with replacement (nanoGPT's way)
    sampling = 'epoch'   the stream cut into windows of block_size + 1 tokens that overlap by one token (every
                         token is a target exactly once), visited once per epoch in a seeded permutation
    sampling = 'documents'  windows that start at a document start and hold the whole documents that fit; a longer
                         document continues in the next windows (packed_windows), visited like 'epoch'

None keeps state beyond the seed: resume is exact and 1, 2 or 8 ranks see the same data. The permutation is a
keyed Feistel network over the window indices, so it costs no memory whatever the corpus size. Each batch can also
carry per-token document ids (from the dataset's document-start index) for attention_mask='document'.
"""
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

SAMPLING = ('auto', 'random', 'epoch', 'documents')
ROOT = os.path.dirname(os.path.abspath(__file__))
SMALL_DATASETS = ('shakespeare_char', 'shakespeare', 'shakespeare_sp')  # prepared on first use
CHUNK = 1 << 20  # index entries handled at a time: bounds memory


class DataError(Exception):
    """A dataset that is not there or not whole: one line for the user."""


def open_dataset(dataset, data_dir='', prepare=True, say=print):
    """(data_dir, meta, {'train': TokenStream, 'val': TokenStream}) of data_dir, or of data/<dataset>. A small
    built-in dataset that has no meta.json yet is prepared first (prepare=True) by its own prepare.py."""
    folder = os.path.join(ROOT, 'data', dataset)
    if not data_dir and prepare and dataset in SMALL_DATASETS and not os.path.isfile(os.path.join(folder, 'meta.json')):
        say(f"data/{dataset} is not prepared yet: running data/{dataset}/prepare.py first")
        done = subprocess.run([sys.executable, os.path.join(folder, 'prepare.py')], capture_output=True, text=True)
        if done.returncode:
            why = (done.stderr.strip().splitlines() or ['no message'])[-1].removeprefix('error: ')
            raise DataError(f"data/{dataset}/meta.json is missing and data/{dataset}/prepare.py could not make it "
                            f"({why})")
    data_dir = data_dir or folder
    if not os.path.isdir(data_dir):
        known = sorted(d for d in os.listdir(os.path.join(ROOT, 'data'))
                       if os.path.isfile(os.path.join(ROOT, 'data', d, 'prepare.py')))
        raise DataError(f"unknown dataset {dataset!r}: no folder {data_dir}; known: {', '.join(known)}")
    if not os.path.isfile(os.path.join(data_dir, 'meta.json')):
        raise DataError(f"{os.path.join(data_dir, 'meta.json')} is missing; run python data/{dataset}/prepare.py first")
    with open(os.path.join(data_dir, 'meta.json')) as f:
        meta = json.load(f)
    try:
        streams = {split: TokenStream(data_dir, split, meta) for split in ('train', 'val')}
    except FileNotFoundError as e:
        raise DataError(f"{e}; run python data/{dataset}/prepare.py first")
    except ValueError as e:
        raise DataError(str(e))
    return data_dir, meta, streams


class TokenStream:
    """One split's shards (meta.json 'shards', or the single <split>.bin of a small dataset) as one token array."""

    def __init__(self, data_dir, split, meta):
        shards = meta.get('shards', {}).get(split) or [{'file': f'{split}.bin', 'tokens': meta[f'{split}_tokens']}]
        self.paths = [os.path.join(data_dir, s['file']) for s in shards]
        self.dtype = np.dtype(meta['dtype'])
        for path, shard in zip(self.paths, shards):
            if not os.path.isfile(path):
                raise FileNotFoundError(path)
            if os.path.getsize(path) != shard['tokens'] * self.dtype.itemsize:
                raise ValueError(f"{path} holds {os.path.getsize(path) // self.dtype.itemsize:,} tokens but "
                                 f"meta.json says {shard['tokens']:,}: the dataset is incomplete, prepare it again")
        self.starts = np.cumsum([0] + [s['tokens'] for s in shards])
        self.total = int(self.starts[-1])
        self.data_dir, self.index = data_dir, meta.get('document_index', {}).get(split)

    def document_starts(self):
        """Where each document starts in the stream (int64, ascending), from the token files' document-start
        indexes (data/corpus.py writes them), in a temp-file memmap: memory stays flat with any number of documents."""
        if not self.index:
            raise ValueError(f"{self.data_dir} has no document-start index (meta.json 'document_index'); add it with "
                             f"python data/add_document_index.py {self.data_dir}")
        parts = []
        for name in self.index:
            path = os.path.join(self.data_dir, name)
            if not os.path.isfile(path) or os.path.getsize(path) % 8 or not os.path.getsize(path):
                raise ValueError(f"{path} is missing or not a document index; write it again with "
                                 f"python data/add_document_index.py {self.data_dir}")
            parts.append(np.memmap(path, dtype=np.int64, mode='r'))
        out = temp_array(sum(len(p) for p in parts))
        at = 0
        for part, offset in zip(parts, self.starts):
            for first in range(0, len(part), CHUNK):
                piece = part[first:first + CHUNK]
                out[at:at + len(piece)] = piece + offset
                at += len(piece)
        return out

    def windows(self, starts, length):
        """Rows of `length` tokens from each start position, crossing shard boundaries where they must."""
        out = np.empty((len(starts), length), dtype=np.int64)
        for row, start in enumerate(starts):
            start, filled = int(start), 0
            shard = int(np.searchsorted(self.starts, start, side='right')) - 1
            while filled < length:
                # a fresh memmap per read keeps memory flat (a long-lived one keeps the pages it touched)
                data = np.memmap(self.paths[shard], dtype=self.dtype, mode='r')
                offset = start + filled - int(self.starts[shard])
                piece = data[offset:offset + length - filled]
                out[row, filled:filled + len(piece)] = piece
                filled += len(piece)
                shard += 1
        return out


def temp_array(n):
    """An int64 array of n entries backed by an unnamed temp file: the OS pages it out, so RAM stays flat."""
    return np.memmap(tempfile.TemporaryFile(), dtype=np.int64, mode='w+', shape=(max(n, 1),))[:n]


def packed_windows(doc_starts, total, block):
    """The window starts of sampling='documents' (int64, ascending, a temp-file memmap), packed greedily from the
    first document: a window starts at a document start and owns the whole documents that fit in block tokens
    from there; the first that does not fit starts the next window. A document longer than block owns windows of
    block tokens, the last holding its rest and the documents that fit after it. Window k owns the tokens
    [starts[k], starts[k+1]) (the last: up to total), at most block of them: each token is owned exactly once."""
    n = len(doc_starts)
    pieces, successor = temp_array(n), temp_array(n)  # per document opening a window: its windows, and the next opener
    for first in range(0, n, CHUNK):
        p = np.asarray(doc_starts[first:first + CHUNK])
        ends = np.append(np.asarray(doc_starts[first + 1:first + CHUNK + 1]), total)[:len(p)]
        continued = (ends - p - 1) // block  # the windows a long document fills before its rest
        pieces[first:first + len(p)] = continued + 1
        reach = p + (continued + 1) * block  # the rest's window ends here at the latest
        nxt = np.searchsorted(doc_starts, reach, side='right') - 1
        successor[first:first + len(p)] = np.where(reach >= total, n, nxt)
    openers, count, d = temp_array(n), 0, 0
    while d < n:  # the one sequential step: follow the chain of openers (a list walk, ~0.1 us per window)
        openers[count], count, d = d, count + 1, int(successor[d])
    openers = openers[:count]
    windows = temp_array(int(sum(int(pieces[openers[i:i + CHUNK]].sum()) for i in range(0, count, CHUNK))))
    at = 0
    for first in range(0, count, CHUNK):
        chosen = np.asarray(openers[first:first + CHUNK])
        k = np.asarray(pieces[chosen])
        within = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)  # 0, 1, ... inside each opener's windows
        windows[at:at + len(within)] = np.repeat(np.asarray(doc_starts[chosen]), k) + within * block
        at += len(within)
    # a window from the split's last token owns nothing (that token predicts nothing): a split ending in an empty
    # document (EOT EOT) would make one, and its row of no targets a NaN loss
    return windows[:int(np.searchsorted(windows, total - 1))]


def _mix(x):
    """splitmix64's finalizer on uint64 arrays (wrapping arithmetic): a cheap, well-spread hash."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xbf58476d1ce4e5b9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94d049bb133111eb)
    return x ^ (x >> np.uint64(31))


def permute(positions, n, key):
    """A pseudorandom permutation of range(n) applied to positions: 4-round Feistel, cycle-walking into range."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask, shift = np.uint64((1 << half) - 1), np.uint64(half)

    def encrypt(x):
        left, right = x >> shift, x & mask
        for k in round_keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        return (left << shift) | right
    with np.errstate(over='ignore'):  # the hash's arithmetic wraps on purpose
        round_keys = _mix(np.arange(4, dtype=np.uint64) + np.uint64(key % 2 ** 64) * np.uint64(4))
        x = encrypt(np.asarray(positions, dtype=np.uint64))
        outside = x >= n
        while outside.any():  # the domain is at most 4n: a few more rounds bring every value into range
            x[outside] = encrypt(x[outside])
            outside = x >= n
    return x.astype(np.int64)


class Batches:
    """Training and evaluation batches of one run."""

    def __init__(self, streams, meta, block_size, batch_size, gradient_accumulation_steps, seed, sampling, device,
                 document_ids=False):
        """document_ids=True: each batch also carries every input token's document id (else None). It and
        sampling='documents' need the dataset's document-start index (ValueError naming the command that adds it)."""
        if sampling not in SAMPLING:
            raise ValueError(f"sampling={sampling!r} is invalid; allowed: {', '.join(SAMPLING)}")
        self.sampling = sampling if sampling != 'auto' else 'epoch' if 'shards' in meta else 'random'
        self.streams = streams  # {'train': TokenStream, 'val': TokenStream}
        self.block, self.batch_size, self.accumulation = block_size, batch_size, gradient_accumulation_steps
        self.seed, self.device, self.document_ids = seed, device, document_ids
        self.windows_per_epoch = (self.streams['train'].total - 1) // block_size
        if document_ids or self.sampling == 'documents':
            self.doc_starts = {split: stream.document_starts() for split, stream in streams.items()}
        if self.sampling == 'documents':
            self.window_starts = packed_windows(self.doc_starts['train'], streams['train'].total, block_size)
            self.windows_per_epoch = len(self.window_starts)
        self.prefetcher = ThreadPoolExecutor(1, thread_name_prefix='prefetch')

    def to_device(self, *arrays):
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        if self.device.startswith('cuda'):
            return [t.pin_memory().to(self.device, non_blocking=True) for t in tensors]
        return [t.to(self.device) for t in tensors]

    def batch(self, split, rows, starts, owned=None):
        """(x, y, document ids or None) of rows read from starts; with owned, targets past owned[row] are -1."""
        x, y = rows[:, :-1], rows[:, 1:]
        if owned is not None:
            y = np.where(np.arange(self.block) < owned[:, None], y, -1)
        if not self.document_ids:
            return (*self.to_device(x, y), None)
        positions = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(self.block)
        ids = np.searchsorted(self.doc_starts[split], positions, side='right') - 1
        return tuple(self.to_device(x, y, ids))

    def document_rows(self, windows):
        """(rows, starts, owned) of packed windows. A row's tokens past what its window owns (the next windows'
        start, read to keep the shape) are inputs without targets, so every token but the split's first is a
        target exactly once per epoch; being later, causal attention keeps them from changing the owned ones.
        A row at the end of the split is padded the same way."""
        n, total = len(self.window_starts), self.streams['train'].total
        starts = np.asarray(self.window_starts[windows])
        nxt = windows + 1
        ends = np.where(nxt < n, np.asarray(self.window_starts[np.minimum(nxt, n - 1)]), total)
        rows = np.zeros((len(starts), self.block + 1), dtype=np.int64)
        for row, start in enumerate(starts):
            length = min(self.block + 1, total - int(start))
            rows[row, :length] = self.streams['train'].windows([start], length)[0]
        return rows, starts, np.minimum(ends, total - 1) - starts  # the split's last token has nothing to predict

    def random_rows(self, split, rng):
        # the last window that fits starts at total - (block + 1); integers() excludes its upper bound
        starts = rng.integers(0, self.streams[split].total - self.block, size=self.batch_size)
        return self.streams[split].windows(starts, self.block + 1), starts

    def train(self, iteration, micro_step):
        """(x, y, document ids or None, dropout seed) of one global micro-step: a pure function of (seed,
        iteration, micro-step)."""
        rng = np.random.default_rng([self.seed, 0, iteration, micro_step])
        if self.sampling == 'random':
            batch = self.batch('train', *self.random_rows('train', rng))
        else:
            first = (iteration * self.accumulation + micro_step) * self.batch_size  # samples before this one
            samples = np.arange(first, first + self.batch_size, dtype=np.int64)
            epochs, positions = np.divmod(samples, self.windows_per_epoch)
            windows = np.empty_like(samples)
            for epoch in np.unique(epochs):  # a batch may straddle two epochs
                inside = epochs == epoch
                key = int(np.random.default_rng([self.seed, 2, int(epoch)]).integers(2 ** 63))  # a new order each epoch
                windows[inside] = permute(positions[inside], self.windows_per_epoch, key)
            if self.sampling == 'documents':
                batch = self.batch('train', *self.document_rows(windows))
            else:
                batch = self.batch('train', self.streams['train'].windows(windows * self.block, self.block + 1),
                                   windows * self.block)
        return (*batch, int(rng.integers(2 ** 62)))

    def prefetch(self, iteration, micro_step):
        """Start reading a training micro-batch in the background; .result() gives what train() gives."""
        return self.prefetcher.submit(self.train, iteration, micro_step)

    def eval(self, split, k):
        """(x, y, document ids or None) of the k-th fixed evaluation batch of a split: the same at every evaluation."""
        return self.batch(split, *self.random_rows(split, np.random.default_rng([self.seed, 1, int(split == 'val'), k])))

    def epoch(self, iteration):
        """How many times over the training tokens the first `iteration` iterations went."""
        samples = iteration * self.accumulation * self.batch_size
        if self.sampling in ('epoch', 'documents'):
            return samples / self.windows_per_epoch
        return samples * self.block / self.streams['train'].total

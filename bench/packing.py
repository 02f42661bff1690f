"""
What packing whole documents into rows costs on a prepared dataset's train split, for several block sizes:
sampling='documents' (nothing cropped; the price is positions without targets) against nanochat's BOS-aligned
rows (every position a target; the price is cropped tokens), best-fit from a buffer of 1,000 documents and
greedy (the same with a buffer of one).

    python bench/packing.py data/tinystories --block_sizes=256,1024,2048

Only the document index is read (document lengths); nothing is trained. A document here is its tokens and its
end-of-text token, the length of nanochat's BOS + tokens.
"""
import bisect
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import loader  # noqa: E402
from errors import die  # noqa: E402


def bos_rows(lengths, block, buffer_size):
    """(tokens in rows, tokens cropped) of nanochat's BOS-aligned best-fit packing into rows of block + 1 tokens:
    a row takes the longest buffered document that fits, until none does, then the shortest one, cropped to fill
    it. Counted over the rows built while the buffer could still be refilled (the steady state)."""
    documents, buffer = iter(lengths), []  # buffer: lengths, sorted
    kept = cropped = 0
    while True:
        pos, row_cropped = 0, 0
        while pos < block + 1:
            while len(buffer) < buffer_size:
                n = next(documents, None)
                if n is None:
                    return kept, cropped
                bisect.insort(buffer, n)
            room = block + 1 - pos
            fits = bisect.bisect_right(buffer, room)
            if fits:
                pos += buffer.pop(fits - 1)
            else:
                row_cropped += buffer.pop(0) - room
                pos += room
        kept, cropped = kept + block + 1, cropped + row_cropped


def main(argv):
    options = {'block_sizes': '256,1024,2048', 'buffer': '1000'}
    data = None
    for arg in argv:
        key, _, value = arg.removeprefix('--').partition('=')
        if not arg.startswith('--') and data is None:
            data = arg
        elif arg.startswith('--') and key in options:
            options[key] = value
        else:
            die(f"unknown argument {arg!r}; allowed: a dataset folder, {', '.join('--' + k for k in options)}")
    if data is not None and not os.path.isdir(data):
        die(f"{data}: no such folder (a prepared dataset)")
    if data is None:
        die("usage: python bench/packing.py DATA_DIR [--block_sizes=256,1024,2048] [--buffer=1000]")
    try:
        block_sizes = [int(b) for b in options['block_sizes'].split(',')]
        buffer = int(options['buffer'])
    except ValueError:
        die(f"--block_sizes={options['block_sizes']!r} and --buffer={options['buffer']!r} must be whole numbers")
    if min(block_sizes) < 1 or buffer < 1:
        die(f"--block_sizes={options['block_sizes']!r} and --buffer={buffer} must be at least 1")
    try:
        _, meta, streams = loader.open_dataset('', data)
        stream = streams['train']
        starts = np.asarray(stream.document_starts())
    except (loader.DataError, ValueError) as e:
        die(str(e))
    lengths = np.diff(np.append(starts, stream.total))
    print(f"{data}: {stream.total:,} train tokens in {len(lengths):,} documents (mean {lengths.mean():.1f}, "
          f"median {np.median(lengths):.0f}, max {lengths.max():,} tokens)")
    print("block | documents: windows, positions with targets | BOS best-fit: rows, cropped | BOS greedy: cropped"
          " | in documents > block + 1")
    for block in block_sizes:
        windows = len(loader.packed_windows(starts, stream.total, block))
        targets = (stream.total - 1) / (windows * block)  # every token but the split's first is a target once
        kept, cropped = bos_rows(lengths.tolist(), block, buffer)
        greedy_kept, greedy_cropped = bos_rows(lengths.tolist(), block, 1)
        too_long = lengths[lengths > block + 1].sum() - (block + 1) * (lengths > block + 1).sum()
        print(f"{block:5d} | {windows:,} windows, {targets:.1%} | {kept // (block + 1):,} rows, "
              f"{cropped / (kept + cropped):.2%} | {greedy_cropped / (greedy_kept + greedy_cropped):.2%} | "
              f"{too_long / stream.total:.2%}")


if __name__ == '__main__':
    main(sys.argv[1:])

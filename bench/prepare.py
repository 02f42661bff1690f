"""
What preparing a corpus costs: throughput against raw tiktoken in the same number of processes, and the peak
memory of the whole process tree at several corpus sizes (it must not grow with the corpus).

    python bench/prepare.py --sizes_mb 50 300 --num_proc 2

For each size it writes a corpus of real English documents (the TinyStories sample in ../shared/data, or
--text FILE, stories repeated in shuffled order until the size is reached) as half parquet, half jsonl, runs
data/custom/prepare.py on it with the GPT-2 BPE, and samples the resident memory of the prepare process and its
workers every 50 ms. The baseline encodes the same documents, already in memory, with tiktoken's
encode_ordinary_batch (and with a plain encode_ordinary loop, which is faster on short documents) split over the
same number of processes. The table goes to stdout and a JSON file to bench/results/.
"""
import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import monitor  # noqa: E402

SHARED_TEXT = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'tinystories', 'train_head.txt')


def stories(path):
    with open(path, encoding='utf-8') as f:
        text = f.read()
    parts = text.split('<|endoftext|>') if '<|endoftext|>' in text else text.split('\n\n')
    return [p.strip() for p in parts if p.strip()]


def write_corpus(folder, documents, size_mb, seed=0):
    """About size_mb of documents: the first half as a parquet file, the rest as jsonl; returns the documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng, chosen, size = random.Random(seed), [], 0
    while size < size_mb * 2 ** 20:
        order = list(documents)
        rng.shuffle(order)
        for doc in order:
            chosen.append(doc)
            size += len(doc.encode()) + 1
            if size >= size_mb * 2 ** 20:
                break
    os.makedirs(folder, exist_ok=True)
    half = len(chosen) // 2
    rows_per_group = max(1, (8 << 20) // max(1, size // len(chosen)))  # row groups of about 8 MiB of text
    pq.write_table(pa.table({'text': chosen[:half]}), os.path.join(folder, 'part_a.parquet'),
                   row_group_size=rows_per_group, use_dictionary=False)
    with open(os.path.join(folder, 'part_b.jsonl'), 'w') as f:
        for doc in chosen[half:]:
            f.write(json.dumps({'text': doc}) + '\n')
    return chosen


def tree_rss(pid):
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except OSError:
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f'/proc/{p}/status') as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmRSS:'))
        except (OSError, StopIteration):
            pass
    return total


def run_prepare(folder, out_dir, num_proc):
    start = time.time()
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, 'data', 'custom', 'prepare.py'), '--input', folder,
                                '--out_dir', out_dir, '--tokenizer', 'gpt2', '--num_proc', str(num_proc),
                                '--val_fraction', '0.01', '--overwrite'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = [0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss(process.pid))
            time.sleep(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.communicate()[0]
    sampler.join()
    if process.returncode:
        sys.exit(f"prepare failed: {output}")
    with open(os.path.join(out_dir, 'meta.json')) as f:
        meta = json.load(f)
    return time.time() - start, peak[0], meta


def _encode_share(args):
    documents, batch = args
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    start = time.time()
    if batch:
        n = sum(len(ids) for ids in enc.encode_ordinary_batch(documents))
    else:
        n = sum(len(enc.encode_ordinary(d)) for d in documents)
    return n, time.time() - start


def raw_tiktoken(documents, num_proc, batch):
    """Seconds for num_proc processes to encode their share of the documents (encoding only, slowest share)."""
    shares = [documents[i::num_proc] for i in range(num_proc)]
    with multiprocessing.get_context('spawn').Pool(num_proc) as pool:
        results = pool.map(_encode_share, [(share, batch) for share in shares])
    return sum(n for n, _ in results), max(t for _, t in results)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes_mb', type=float, nargs='+', default=[50, 300])
    parser.add_argument('--num_proc', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--text', default=SHARED_TEXT, help='documents to build the corpus from')
    parser.add_argument('--join', type=int, default=1, help='stories per document: 1 gives ~0.2 KB documents, '
                        '20 about 4 KB, the length of a typical web document (OpenWebText, FineWeb)')
    parser.add_argument('--work_dir', default='/tmp/modgpt_prepare_bench')
    args = parser.parse_args()
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'tiktoken_cache'))
    if not os.path.isfile(args.text):
        sys.exit(f"error: {args.text} not found; pass --text FILE with documents separated by blank lines")
    source = stories(args.text)
    source = ['\n\n'.join(source[i:i + args.join]) for i in range(0, len(source), args.join)]
    rows = []
    for size in args.sizes_mb:
        folder = os.path.join(args.work_dir, f'corpus_{size:g}mb_join{args.join}')
        documents = write_corpus(folder, source, size)
        text_bytes = sum(len(d.encode()) for d in documents)
        seconds, peak, meta = run_prepare(folder, os.path.join(args.work_dir, 'out'), args.num_proc)
        tokens = meta['train_tokens'] + meta['val_tokens']
        _, batch_s = raw_tiktoken(documents, args.num_proc, batch=True)
        _, loop_s = raw_tiktoken(documents, args.num_proc, batch=False)
        rows.append({'size_mb': round(text_bytes / 2 ** 20, 1), 'documents': len(documents), 'tokens': tokens,
                     'mean_document_bytes': round(text_bytes / len(documents)),
                     'prepare_s': round(seconds, 2), 'prepare_mb_s': round(text_bytes / 2 ** 20 / seconds, 2),
                     'prepare_tokens_s': round(tokens / seconds), 'peak_rss_mb': round(peak / 2 ** 20),
                     'raw_batch_mb_s': round(text_bytes / 2 ** 20 / batch_s, 2),
                     'raw_loop_mb_s': round(text_bytes / 2 ** 20 / loop_s, 2),
                     'vs_raw_batch': round(batch_s / seconds, 2), 'vs_raw_loop': round(loop_s / seconds, 2)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.num_proc} processes, GPT-2 BPE, start to finish (reading, hashing, writing shards included)\n")
    print('| corpus | documents (mean size) | tokens | prepare | MB/s | tokens/s | peak RSS (tree) | raw batch MB/s | '
          'raw loop MB/s | vs raw batch | vs raw loop |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['size_mb']} MiB | {r['documents']:,} ({r['mean_document_bytes']:,} B) | {r['tokens']:,} | {r['prepare_s']} s | {r['prepare_mb_s']} | "
              f"{r['prepare_tokens_s']:,} | {r['peak_rss_mb']} MiB | {r['raw_batch_mb_s']} | {r['raw_loop_mb_s']} | "
              f"{r['vs_raw_batch']}x | {r['vs_raw_loop']}x |")
    os.makedirs(os.path.join(ROOT, 'bench', 'results'), exist_ok=True)
    path = os.path.join(ROOT, 'bench', 'results', time.strftime('prepare_%Y%m%d_%H%M%S.json'))
    with open(path, 'w') as f:
        json.dump({'num_proc': args.num_proc, 'join': args.join, 'rows': rows, **monitor.reproducibility_info('cpu')}, f, indent=1)
    print(f"\nwritten to {path}")


if __name__ == '__main__':
    main()

"""SlimPajama-627B (deduplicated RedPajama: web, books, code, papers, Wikipedia, StackExchange), for the 1.36B configs:

    python data/slimpajama_627b/prepare.py --chunks 1            # one of the 10 train chunks (~62B tokens)
    python data/slimpajama_627b/prepare.py --chunks 1 --max_files 100
    python data/slimpajama_627b/prepare.py --input SlimPajama-627B/   # a local copy with train/ and validation/

Its own validation files are the val split (--val_chunks, default 1 of 5)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import corpus  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = 'cerebras/SlimPajama-627B'


def chunks(text, largest):
    try:
        numbers = sorted({int(c) for c in text.split(',')})
    except ValueError:
        numbers = []
    if not numbers or numbers[0] < 1 or numbers[-1] > largest:
        corpus.die(f"chunk list {text!r} is invalid; allowed: numbers from 1 to {largest}, comma-separated")
    return numbers


def fetch(args):
    train = [f'train/chunk{c}/*.jsonl.zst' for c in chunks(args.chunks, 10)]
    val = [f'validation/chunk{c}/*.jsonl.zst' for c in chunks(args.val_chunks, 5)]
    return (corpus.download(REPO, train, args.download_dir, None, args.max_files),
            corpus.download(REPO, val, args.download_dir, None, None))


if __name__ == '__main__':
    parser = corpus.hub_arguments(argparse.ArgumentParser(description=__doc__,
                                                          formatter_class=argparse.RawDescriptionHelpFormatter), HERE)
    parser.add_argument('--chunks', default='1', help='train chunks to fetch, e.g. 1 or 1,2,3 (of 10)')
    parser.add_argument('--val_chunks', default='1', help='validation chunks to fetch (of 5)')
    args = parser.parse_args()
    args.val_fraction = 0.0 if not args.input else args.val_fraction
    corpus.main(args, source=args.input or f'hf:{REPO}', fetch=lambda: fetch(args))

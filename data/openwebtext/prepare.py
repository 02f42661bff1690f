"""OpenWebText (GPT-2's WebText, recreated: ~8M documents, 9.0B GPT-2 tokens) for nanoGPT's GPT-2 124M recipe:

    python data/openwebtext/prepare.py                       # fetch the parquet files from the hub, then tokenize
    python data/openwebtext/prepare.py --input owt/*.parquet # local copies (or .txt / .jsonl files)

Like nanoGPT, 0.05% of the documents (by a hash of their text) form the val split."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import corpus  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = 'Skylion007/openwebtext'

if __name__ == '__main__':
    parser = corpus.hub_arguments(argparse.ArgumentParser(description=__doc__), HERE)
    parser.add_argument('--revision', default=None, help='hub revision (branch, tag or commit) to fetch')
    parser.add_argument('--pattern', default='*.parquet', help='which files of the repository to fetch')
    args = parser.parse_args()
    corpus.main(args, source=args.input or f'hf:{REPO}',
                fetch=lambda: (corpus.download(REPO, [args.pattern], args.download_dir, args.revision,
                                               args.max_files), []))

"""FineWeb-Edu (educational web pages filtered from FineWeb) in one of its published subsets:

    python data/fineweb_edu/prepare.py --subset sample-10BT        # 10B GPT-2 tokens, ~27 GB of parquet
    python data/fineweb_edu/prepare.py --subset sample-100BT --max_files 20
    python data/fineweb_edu/prepare.py --subset CC-MAIN-2024-10    # one crawl
    python data/fineweb_edu/prepare.py --input fineweb/*.parquet   # local copies

--subset sample-10BT | sample-100BT | sample-350BT | a crawl name such as CC-MAIN-2024-10. A --val_fraction
(0.05% by default) of the documents, chosen by a hash of their text, forms the val split."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import corpus  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = 'HuggingFaceFW/fineweb-edu'


def pattern(subset):
    if subset.startswith('sample-') and subset.endswith('BT'):
        return f"sample/{subset[len('sample-'):]}/*.parquet"
    if subset.startswith('CC-MAIN-'):
        return f'data/{subset}/*.parquet'
    corpus.die(f"--subset {subset!r} is invalid; allowed: sample-10BT, sample-100BT, sample-350BT, CC-MAIN-<crawl>")


if __name__ == '__main__':
    parser = corpus.hub_arguments(argparse.ArgumentParser(description=__doc__,
                                                          formatter_class=argparse.RawDescriptionHelpFormatter), HERE)
    parser.add_argument('--subset', default='sample-10BT')
    args = parser.parse_args()
    glob_pattern = pattern(args.subset)
    corpus.main(args, source=args.input or f'hf:{REPO}/{glob_pattern}',
                fetch=lambda: (corpus.download(REPO, [glob_pattern], args.download_dir, None, args.max_files), []))

"""Any corpus as a dataset, tokenized in parallel into shards (see data/corpus.py):

    python data/custom/prepare.py --input corpus/ extra/*.parquet --tokenizer gpt2 --out_dir data/mine

--input takes files, folders and globs of .txt (one document per file, or --doc_separator), .jsonl,
.jsonl.gz, .jsonl.zst and .parquet (--text_column, default text). A folder holding train/ and val/
subfolders gives the val split explicitly; otherwise --val_input files do, or a --val_fraction of the
documents chosen by a hash of their text. Train with: python train.py --data_dir=data/mine ..."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import corpus  # noqa: E402

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = corpus.add_arguments(parser, os.path.dirname(os.path.abspath(__file__)), need_input=False).parse_args()
    corpus.main(args)

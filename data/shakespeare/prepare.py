"""Tiny Shakespeare with the GPT-2 BPE (tiktoken): python data/shakespeare/prepare.py [--input PATH]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import base_parser, gpt2_tokenizer, shakespeare_splits, write_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == '__main__':
    args = base_parser(__doc__, HERE).parse_args()
    text, train, val, source = shakespeare_splits(args, HERE)
    write_dataset(args.out_dir, gpt2_tokenizer(), train, val, text, source)

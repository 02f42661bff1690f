"""Character-level Tiny Shakespeare: python data/shakespeare_char/prepare.py [--input PATH]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import base_parser, char_tokenizer, shakespeare_splits, write_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == '__main__':
    args = base_parser(__doc__, HERE).parse_args()
    text, train, val, source = shakespeare_splits(args, HERE)
    write_dataset(args.out_dir, char_tokenizer(text), train, val, text, source)

"""Tiny Shakespeare with the GPT-2 BPE (tiktoken): python data/shakespeare/prepare.py [--input PATH]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import base_parser, fetch_text, gpt2_tokenizer, write_dataset  # noqa: E402

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == '__main__':
    args = base_parser(__doc__, HERE).parse_args()
    text = fetch_text(URL, os.path.join(HERE, 'input.txt'), args)
    n = int(0.9 * len(text))
    write_dataset(args.out_dir, gpt2_tokenizer(), text[:n], text[n:], text, args.input or URL)

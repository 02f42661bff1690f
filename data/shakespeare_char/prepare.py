"""Character-level Tiny Shakespeare: python data/shakespeare_char/prepare.py [--input PATH]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import base_parser, char_tokenizer, fetch_text, write_dataset  # noqa: E402

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == '__main__':
    args = base_parser(__doc__, HERE).parse_args()
    text = fetch_text(URL, os.path.join(HERE, 'input.txt'), args)
    n = int(0.9 * len(text))
    write_dataset(args.out_dir, char_tokenizer(text), text[:n], text[n:], text, args.input or URL)

"""Tiny Shakespeare with a SentencePiece BPE trained on the training split:
python data/shakespeare_sp/prepare.py [--input PATH] [--vocab_size 16000]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import base_parser, fetch_text, train_sentencepiece, write_dataset  # noqa: E402

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == '__main__':
    parser = base_parser(__doc__, HERE)
    parser.add_argument('--vocab_size', type=int, default=16000)
    args = parser.parse_args()
    text = fetch_text(URL, os.path.join(HERE, 'input.txt'), args)
    n = int(0.9 * len(text))
    tokenizer = train_sentencepiece(text[:n], args.out_dir, args.vocab_size)
    write_dataset(args.out_dir, tokenizer, text[:n], text[n:], text, args.input or URL)

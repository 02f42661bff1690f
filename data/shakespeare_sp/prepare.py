"""Tiny Shakespeare with a SentencePiece BPE trained on the training split:
python data/shakespeare_sp/prepare.py [--input PATH] [--vocab_size 16000]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import base_parser, shakespeare_splits, train_sentencepiece, write_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == '__main__':
    parser = base_parser(__doc__, HERE)
    parser.add_argument('--vocab_size', type=int, default=16000)
    args = parser.parse_args()
    text, train, val, source = shakespeare_splits(args, HERE)
    write_dataset(args.out_dir, train_sentencepiece(train, args.out_dir, args.vocab_size), train, val, text, source)

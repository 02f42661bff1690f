"""TinyStories with the GPT-2 BPE, an end-of-text token after every story:
python data/tinystories/prepare.py [--input FILE_OR_DIR]

Online it downloads the official train and validation files (about 2 GB). Offline, --input takes
a folder holding files whose names contain 'train' and 'val' (e.g. ../shared/data/tinystories), or one
file that is split 95/5 by story. Stories are separated by <|endoftext|> lines or by blank lines."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import base_parser, die, fetch_text, gpt2_tokenizer, read_text_files, write_dataset  # noqa: E402

BASE = 'https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/'
HERE = os.path.dirname(os.path.abspath(__file__))


def stories(text):
    parts = text.split('<|endoftext|>') if '<|endoftext|>' in text else re.split(r'\n\s*\n', text)
    return [s.strip() for s in parts if s.strip()]


def find_split(folder, words):
    names = sorted(n for n in os.listdir(folder) if n.endswith('.txt') and any(w in n.lower() for w in words))
    return os.path.join(folder, names[0]) if names else None


if __name__ == '__main__':
    args = base_parser(__doc__, HERE).parse_args()
    if args.input and os.path.isdir(args.input):
        train_file, val_file = find_split(args.input, ['train']), find_split(args.input, ['val', 'valid'])
        if not train_file or not val_file:
            die(f"{args.input} needs a *train*.txt and a *val*.txt file")
        train, val = stories(read_text_files(train_file)), stories(read_text_files(val_file))
        source = args.input
    elif args.input:
        everything = stories(read_text_files(args.input))
        n = int(0.95 * len(everything))
        train, val, source = everything[:n], everything[n:], args.input
    else:
        args.input = None
        train = stories(fetch_text(BASE + 'TinyStories-train.txt', os.path.join(HERE, 'input_train.txt'), args))
        val = stories(fetch_text(BASE + 'TinyStories-valid.txt', os.path.join(HERE, 'input_val.txt'), args))
        source = BASE
    enc = gpt2_tokenizer()

    def encode(text):  # text here is the joined split; re-split and add an end-of-text token after each story
        ids = []
        for batch in enc.enc.encode_ordinary_batch(text.split('\x00')):
            ids.extend(batch)
            ids.append(enc.eot)
        return ids
    write_dataset(args.out_dir, enc, '\x00'.join(train), '\x00'.join(val), '\n\n'.join(train + val), source,
                  encode=encode)

"""TinyStories with the GPT-2 BPE, an end-of-text token after every story, through the corpus engine
(data/corpus.py: worker processes, memory bounded whatever the corpus size, resumable, token shards):

    python data/tinystories/prepare.py [--input FILE_OR_DIR] [--num_proc N]

Online it downloads the official train and validation files (about 2 GB). Offline, --input takes a folder
holding .txt files whose names contain 'train' and 'val' (e.g. ../shared/data/tinystories), or one file whose
stories go to val by a hash of their text (5%). Stories are separated by <|endoftext|> or by blank lines; a file
of the second kind is first rewritten, streaming, as .jsonl (one story a line) under out_dir/source/."""
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import corpus  # noqa: E402
from common import base_parser, die, download_file, gpt2_tokenizer  # noqa: E402
from files import atomic_write  # noqa: E402  (common put the repository root on sys.path)

BASE = 'https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/'
HERE = os.path.dirname(os.path.abspath(__file__))
EOT = '<|endoftext|>'


def find_split(folder, words):
    names = sorted(n for n in os.listdir(folder) if n.endswith('.txt') and any(w in n.lower() for w in words))
    return os.path.join(folder, names[0]) if names else None


def blank_line_stories(path):
    """The stories of a file separated by blank lines (as re.split(r'\\n\\s*\\n') cuts them), stripped, streamed."""
    lines = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield ''.join(lines).strip()
                lines = []
    if lines:
        yield ''.join(lines).strip()


def engine_input(path, staging):
    """The file the engine reads for one input: the input itself when <|endoftext|> separates its stories, else a
    .jsonl of its stories, written once (its name carries the input's path, size and mtime, so a rerun reuses it)."""
    with open(path, 'rb') as f:
        if corpus.find_from(f, EOT.encode(), 0) is not None:
            if path.lower().endswith('.txt'):
                return path
            die(f"--input {path}: stories separated by {EOT} must be in a .txt file")
    stat = os.stat(path)
    stamp = hashlib.sha256(json.dumps([os.path.realpath(path), stat.st_size, stat.st_mtime_ns]).encode()).hexdigest()
    dest = os.path.join(staging, f"{os.path.basename(path)}.{stamp[:16]}.jsonl")
    if not os.path.exists(dest):
        os.makedirs(staging, exist_ok=True)

        def write(out):
            for story in blank_line_stories(path):
                if story:
                    out.write(json.dumps({'text': story}, ensure_ascii=False) + '\n')
        atomic_write(dest, write, mode='w')
    return dest


if __name__ == '__main__':
    parser = base_parser(__doc__, HERE)
    parser.add_argument('--num_proc', type=int, default=os.cpu_count() or 1, help='worker processes (all cores)')
    parser.add_argument('--overwrite', action='store_true', help='replace a dataset prepared from other inputs')
    args = parser.parse_args()
    if args.input and os.path.isdir(args.input):
        train, val = find_split(args.input, ['train']), find_split(args.input, ['val', 'valid'])
        if not train or not val:
            die(f"{args.input} needs a *train*.txt and a *val*.txt file")
        train, val, source = [train], [val], args.input
    elif args.input:
        if not os.path.isfile(args.input):
            die(f"--input {args.input} does not exist")
        train, val, source = [args.input], [], args.input
    else:
        train = [download_file(BASE + 'TinyStories-train.txt', os.path.join(HERE, 'input_train.txt'))]
        val = [download_file(BASE + 'TinyStories-valid.txt', os.path.join(HERE, 'input_val.txt'))]
        source = BASE
    staging = os.path.join(args.out_dir, 'source')
    train, val = [engine_input(p, staging) for p in train], [engine_input(p, staging) for p in val]
    try:
        corpus.prepare(train, args.out_dir, gpt2_tokenizer(), val_inputs=val, val_fraction=0.05, doc_separator=EOT,
                       num_proc=args.num_proc, overwrite=args.overwrite, source=source)
    except corpus.PrepareError as e:
        die(str(e))
    except KeyboardInterrupt:
        die("interrupted; run the same command again to continue where it stopped")
    for name in os.listdir(staging) if os.path.isdir(staging) else []:  # copies of inputs no longer used
        if os.path.join(staging, name) not in train + val:
            os.remove(os.path.join(staging, name))

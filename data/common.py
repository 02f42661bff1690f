"""
Shared pieces of the prepare scripts: find the source text (download or --input), tokenize,
write train.bin / val.bin (flat uint16, or uint32 past 65,535 tokens in the vocabulary) and meta.json.

The .bin files are raw token arrays with no header, read with numpy.memmap, so corpora of any size
(OpenWebText, FineWeb) can be written shard by shard with append_tokens and still load the same way.
"""
import argparse
import hashlib
import os
import shutil
import sys
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from errors import die  # noqa: E402
from files import atomic_write, write_json  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402


def base_parser(description, with_out_dir):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--input', help='local source text: a file or a folder of .txt files (skips the download)')
    parser.add_argument('--out_dir', default=with_out_dir, help='where to write train.bin, val.bin and meta.json')
    return parser


def read_text_files(path):
    """Text of a file, or of every .txt file under a folder (sorted, joined by newlines)."""
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            return f.read()
    if os.path.isdir(path):
        files = sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names if n.endswith('.txt'))
        if not files:
            die(f"no .txt files under {path}")
        return '\n'.join(read_text_files(f) for f in files)
    die(f"--input {path} does not exist")


def download_file(url, dest):
    """dest, downloaded from url first unless a previous download is there; streamed to disk (any size)."""
    if not os.path.exists(dest):
        try:
            print(f"downloading {url}")
            with urllib.request.urlopen(url, timeout=30) as response:
                atomic_write(dest, lambda f: shutil.copyfileobj(response, f, 1 << 20))
        except Exception as e:
            die(f"could not download {url} ({type(e).__name__}); offline, pass --input PATH to a local copy")
    return dest


def fetch_text(url, dest, args):
    """The source text: --input if given, else a previous download at dest, else download url to dest."""
    if args.input:
        return read_text_files(args.input)
    return read_text_files(download_file(url, dest))


SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'


def shakespeare_splits(args, here):
    """Tiny Shakespeare (--input, or downloaded next to the script) as (text, train, val, source): a 90/10 split."""
    text = fetch_text(SHAKESPEARE_URL, os.path.join(here, 'input.txt'), args)
    n = int(0.9 * len(text))
    return text, text[:n], text[n:], args.input or SHAKESPEARE_URL


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 65536 else np.uint32


def append_tokens(path, ids, dtype):
    with open(path, 'ab') as f:
        np.asarray(ids, dtype=dtype).tofile(f)


def write_dataset(out_dir, tokenizer, train_text, val_text, source_text, source, extra=None, encode=None):
    """Tokenize both splits, write the bins atomically and meta.json last (its presence means complete)."""
    os.makedirs(out_dir, exist_ok=True)
    encode = encode or tokenizer.encode
    dtype = token_dtype(tokenizer.vocab_size)
    counts = {}
    for split, text in (('train', train_text), ('val', val_text)):
        ids = encode(text)
        if len(ids) == 0:
            die(f"the {split} split is empty")
        atomic_write(os.path.join(out_dir, f'{split}.bin'), lambda f: np.asarray(ids, dtype=dtype).tofile(f))
        counts[split] = len(ids)
    meta = {
        'tokenizer': tokenizer.spec,
        'vocab_size': tokenizer.vocab_size,
        'dtype': np.dtype(dtype).name,
        'train_tokens': counts['train'],
        'val_tokens': counts['val'],
        # bytes per split let evaluation convert loss per token into bits per byte
        'train_bytes': len(train_text.encode('utf-8')),
        'val_bytes': len(val_text.encode('utf-8')),
        'source': source,
        'source_sha256': hashlib.sha256(source_text.encode('utf-8')).hexdigest(),
        **(extra or {}),
    }
    write_json(os.path.join(out_dir, 'meta.json'), meta, indent=2)
    print(f"{out_dir}: vocab {tokenizer.vocab_size}, train {counts['train']:,} tokens, val {counts['val']:,} tokens")
    return meta


def char_tokenizer(text):
    return Tokenizer({'type': 'char', 'chars': ''.join(sorted(set(text)))})


def gpt2_tokenizer():
    try:
        return Tokenizer({'type': 'tiktoken', 'name': 'gpt2'})
    except Exception as e:
        die(f"could not load the GPT-2 BPE ({type(e).__name__}); offline, set TIKTOKEN_CACHE_DIR to a tiktoken cache")


def train_sentencepiece(text, out_dir, vocab_size, name='tokenizer'):
    """BPE that round-trips exactly: identity normalization, whitespace kept, unknown bytes as byte pieces."""
    import sentencepiece as spm
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, name)
    # sentencepiece reads its training text line by line; lines are only samples for learning merges
    if vocab_size < 260 + len(set(text)):
        die(f"--vocab_size={vocab_size} is too small: SentencePiece with byte fallback needs 256 byte pieces "
            f"+ {len(set(text))} characters + 3 specials, at least {259 + len(set(text))}")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines(keepends=True)), model_prefix=prefix, model_type='bpe',
        vocab_size=vocab_size, normalization_rule_name='identity', remove_extra_whitespaces=False,
        add_dummy_prefix=False, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=1.0, max_sentence_length=1 << 16, num_threads=os.cpu_count() or 1,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, hard_vocab_limit=False)
    return Tokenizer({'type': 'sentencepiece', 'model': name + '.model'}, out_dir)

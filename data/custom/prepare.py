"""Any text as a dataset:
python data/custom/prepare.py --input DIR_OR_FILE --tokenizer char|gpt2|sentencepiece [--out_dir data/mine]

--input is a .txt file, a folder of .txt files (split 90/10), or a folder with train/ and val/ subfolders.
sentencepiece trains a BPE on the training split (--vocab_size), or reuses a trained one with --sp_model."""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import base_parser, char_tokenizer, die, gpt2_tokenizer, read_text_files, train_sentencepiece, write_dataset  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == '__main__':
    parser = base_parser(__doc__, HERE)
    parser.add_argument('--tokenizer', choices=['char', 'gpt2', 'sentencepiece'], default='char')
    parser.add_argument('--vocab_size', type=int, default=16000, help='for a newly trained SentencePiece model')
    parser.add_argument('--sp_model', help='an existing SentencePiece .model file to use instead of training one')
    args = parser.parse_args()
    if not args.input:
        die("custom needs --input: a .txt file or a folder of .txt files")
    if os.path.isdir(os.path.join(args.input, 'train')) and os.path.isdir(os.path.join(args.input, 'val')):
        train = read_text_files(os.path.join(args.input, 'train'))
        val = read_text_files(os.path.join(args.input, 'val'))
    else:
        text = read_text_files(args.input)
        n = int(0.9 * len(text))
        train, val = text[:n], text[n:]
    if args.tokenizer == 'char':
        tokenizer = char_tokenizer(train + val)
    elif args.tokenizer == 'gpt2':
        tokenizer = gpt2_tokenizer()
    elif args.sp_model:
        if not os.path.isfile(args.sp_model):
            die(f"--sp_model {args.sp_model} does not exist")
        os.makedirs(args.out_dir, exist_ok=True)
        shutil.copyfile(args.sp_model, os.path.join(args.out_dir, 'tokenizer.model'))
        tokenizer = Tokenizer({'type': 'sentencepiece', 'model': 'tokenizer.model'}, args.out_dir)
    else:
        tokenizer = train_sentencepiece(train, args.out_dir, args.vocab_size)
    write_dataset(args.out_dir, tokenizer, train, val, train + val, args.input)

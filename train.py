"""
Train a GPT on one machine, or on many under torchrun.

    python train.py config/train_shakespeare_char_cpu.py
    python train.py config/full_gpt2_124m.py --position_encoding=rope --max_iters=100
    torchrun --standalone --nproc_per_node=8 train.py config/full_gpt2_124m.py --parallelism=fsdp

Config is the plain globals below; config files and --key=value override them (configurator.py). Once set-up is
done every global holds the value the run uses (the architecture fields, device, dtype, seed, data_dir).
The loop at the bottom is the algorithm; run_control.py holds the plumbing around it.
"""
import math
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import torch
import torch.distributed as dist

import checkpoint as ckpt_files
import convert
import downstream
import loader
import monitor
import perf
import process_group
import run_control
import runlog
from configurator import configure
from errors import die
from model import GPT, GPTConfig
from process_group import any_rank, sum_over_ranks
from tokenizer import load_tokenizer

# -----------------------------------------------------------------------------
# I/O
out_dir = 'out'
eval_interval = 250  # evaluate, and write a checkpoint, every this many iterations
log_interval = 10
eval_iters = 50  # batches per split per evaluation; 0 = never evaluate
eval_only = False  # evaluate the checkpoint picked by init_from/resume_from, then exit
eval_at_start = True  # evaluate before the first step; False: a time-to-loss run spends nothing on it
eval_tasks = ''  # downstream tasks scored at evaluations, e.g. 'hellaswag,arc_easy' (downstream.py, eval.py)
eval_tasks_interval = 0  # score them every this many iterations (0 = at every evaluation)
eval_tasks_limit = 500  # the first N items of each task (0 = all)
eval_tasks_dir = ''  # where the tasks' items are (default data/evals)
init_from = 'scratch'  # scratch | resume (newest loadable checkpoint in out_dir) | auto (resume if out_dir has a
#                        checkpoint, else scratch: the same command after a preemption) | hf:<dir> (a Hugging Face
#                        model folder, see convert.py) | gpt2, gpt2-medium, gpt2-large, gpt2-xl (from the hub, online)
resume_from = ''  # a checkpoint path to resume from instead of the newest one
overwrite = False  # allow a fresh run in an out_dir that holds checkpoints (deletes them)
keep_last_n = 3  # ckpt_<iter>.pt files kept; best.pt is kept apart
save_checkpoints = True  # False: write none (benchmarks, sweeps)
progress = False  # a progress bar when stdout is a terminal
grad_stats_interval = 100  # per-layer gradient norms and update/weight ratios every this many iterations (at log lines)
loss_window = 100  # iterations over which the logged loss variance is taken
profile = False  # record a torch.profiler trace of iterations 3-5 into out_dir (open it in chrome://tracing or Perfetto)
wandb_log = False
wandb_project = 'modgpt'
wandb_run_name = ''
# data
dataset = 'shakespeare_char'
data_dir = ''  # default data/<dataset>
batch_size = 12  # micro-batch size
sampling = 'auto'  # random (windows anywhere) | epoch (every window once per epoch) | auto: epoch for sharded corpora
#                    | documents (windows packed from document starts, once per epoch; needs the document index)
gradient_accumulation_steps = 1
# model: the preset's values (model.PRESETS; `python model.py --presets` lists them), then every field set here.
# None = the preset's value, or GPTConfig's default (in the comment) where the preset has none.
arch_preset = 'gpt2'  # gpt2 | llama | team | hybrid | moe
block_size = None  # 1024: the context length
vocab_size = None  # the dataset's vocabulary (meta.json)
n_layer = None  # 12
n_head = None  # 12
n_embd = None  # 768
n_kv_head = None  # n_head (multi-head); 1 = multi-query, between = grouped-query
normalization = None  # layernorm | layernorm_nobias | rmsnorm
norm_eps = None  # 1e-5
activation = None  # gelu | gelu_tanh | silu | relu | relu2 | leaky_relu (standard FFN)
position_encoding = None  # learned_absolute | rope | none
rope_theta = None  # 10000.0
norm_position = None  # pre | post
ffn_type = None  # standard | swiglu | geglu
ffn_hidden = None  # 4 * n_embd (standard) or 8/3 * n_embd rounded up to ffn_multiple_of (gated)
ffn_multiple_of = None  # 256
bias = None  # biases in the Linear layers
weight_tying = None  # the token embedding shared with the output head
dropout = None  # 0.0
attention_backend = None  # sdpa | manual
attention_mask = None  # causal | document: attention within each document only (needs the document index)
qk_norm = None  # default False; True: RMS-normalize queries and keys per head
n_expert = None  # 0 = a dense FFN; > 0: Mixture-of-Experts
n_expert_per_token = None  # 2
moe_intermediate_size = None  # the dense FFN's hidden size
moe_aux_loss_coef = None  # 0.01: the load-balancing loss weight
gradient_checkpointing = None  # default False; True: recompute block activations in backward to save memory
init_std = None  # 0.02
# optimizer and schedule
optimizer = 'adamw'  # adamw | muon (Muon for the blocks' 2-D matrices, AdamW for the rest; single process or ddp)
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
# parallelism (under torchrun)
parallelism = 'ddp'  # ddp | zero1 | fsdp: how ranks spread the state (--use_fsdp=True and --use_zero1=True also work)
fsdp_reshard_after_forward = True  # free gathered parameters after forward (less memory, one more all-gather)
checkpoint_format = 'full'  # full: one file any mode and world size loads; sharded: per-rank shards (fsdp only)
# system
device = 'auto'  # auto (cuda > mps > cpu), or e.g. cpu, cuda, cuda:1, mps
dtype = 'auto'  # auto (bfloat16 on capable GPUs, float16 on older ones, float32 elsewhere), float32, bfloat16, float16
compile = False
compile_mode = 'default'  # default | reduce-overhead | max-autotune
compile_dynamic = False  # True: compile for varying shapes
flash_attention = 'auto'  # auto: SDPA picks; require: fail unless FlashAttention runs; off: never FlashAttention
peak_tflops = None  # the device's peak for MFU; None = datasheet table (GPUs) or a measured matmul (CPU)
seed = 1337
# guard-rails
max_time = None  # seconds of training; then checkpoint and stop
target_val_loss = None  # stop once the val loss reaches this
# -----------------------------------------------------------------------------
config = configure(globals(), types={**{f.name: f.type for f in fields(GPTConfig)}, 'lr_decay_iters': int,
                                     'min_lr': float, 'max_time': float, 'target_val_loss': float,
                                     'peak_tflops': float},
                   aliases={'use_fsdp': ('parallelism', 'fsdp'), 'use_zero1': ('parallelism', 'zero1')})
ARCH_FIELDS = [f.name for f in fields(GPTConfig)]
START = time.time()

# torchrun sets RANK/WORLD_SIZE; gradient_accumulation_steps is global and split over the ranks
distributed = 'RANK' in os.environ
rank = int(os.environ.get('RANK', 0))
world_size = int(os.environ.get('WORLD_SIZE', 1))
master = rank == 0


def say(*args, **kwargs):  # rank 0 speaks for all
    return print(*args, **kwargs) if master else None


# ---- checks that need no model; the device, precision and process group; where the run starts; the data ----
run_control.check_settings(config, distributed, world_size, convert.GPT2_HUB_NAMES)
local_accumulation = gradient_accumulation_steps // world_size
if device == 'auto':
    device = perf.default_device()
device_type = device.split(':')[0]
if device_type == 'cuda' and not torch.cuda.is_available():
    die(f"device={device!r} but CUDA is not available")
if dtype == 'auto':
    dtype = perf.auto_dtype(device_type)
if distributed:
    device = process_group.init(device)

checkpoint, stale_files = run_control.choose_start(out_dir, init_from, resume_from, eval_only, overwrite, parallelism,
                                                   world_size, say)
if checkpoint is not None:
    seed = checkpoint['seed']  # the data stream is a function of the seed: keep the run's
try:  # the Shakespeare datasets are prepared on first use (one process only: ranks would race)
    data_dir, meta, streams = loader.open_dataset(dataset, data_dir, prepare=not distributed, say=say)
except loader.DataError as e:
    die(str(e))

task_names = [t for t in eval_tasks.split(',') if t]  # downstream tasks: data present and encodable, checked now
if task_names:
    task_tokenizer = load_tokenizer(data_dir, meta)
    try:
        downstream.check_tasks(task_names, task_tokenizer, eval_tasks_dir or downstream.DATA_DIR, eval_tasks_limit)
    except downstream.EvalError as e:
        die(str(e))

# ---- model config: the checkpoint's, a Hugging Face model's, or the preset's with the fields set above ----
hf_state = None
if checkpoint is not None:
    # the checkpoint fixes the architecture; attention_mask is a training choice that leaves the weights as they are
    model_config = GPTConfig(**{**checkpoint['model_args'],
                                **({'attention_mask': attention_mask} if attention_mask else {})})
elif init_from not in ('scratch', 'auto'):
    try:
        model_config, hf_state = convert.load_for_training(init_from, dropout=dropout,
                                                           attention_backend=attention_backend,
                                                           attention_mask=attention_mask,
                                                           gradient_checkpointing=gradient_checkpointing)
    except convert.ConversionError as e:
        die(str(e))
else:
    overrides = {k: globals()[k] for k in ARCH_FIELDS if globals()[k] is not None}
    overrides.setdefault('vocab_size', meta['vocab_size'])
    try:
        model_config = GPTConfig.from_preset(arch_preset, **overrides)
    except ValueError as e:
        die(str(e))
for k in ARCH_FIELDS:  # from here on each architecture global (and the logged config) is the model's own value
    globals()[k] = config[k] = getattr(model_config, k)
# the fields whose None means "derived" hold what they derive to (the config keeps None, as the checkpoint does)
n_kv_head, ffn_hidden = model_config.kv_heads, model_config.ffn_hidden_size
moe_intermediate_size = model_config.expert_hidden_size if n_expert else None
if meta['vocab_size'] > vocab_size:
    die(f"the dataset's vocabulary ({meta['vocab_size']} in {data_dir}/meta.json) is larger than the model's "
        f"vocab_size={vocab_size}")
for _split, _stream in streams.items():
    if _stream.total <= block_size + 1:
        die(f"block_size={block_size} is larger than the {_split} split ({_stream.total} tokens)")

ptdtype = getattr(torch, dtype)
autocast = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on TF32 tensor cores (and MFU counts TF32 peaks)
torch.backends.cudnn.allow_tf32 = True

try:  # the attention kernel: flash_attention's promise kept, and the SDPA backend that really runs named
    attention_context, attention_kernel = perf.attention_for_run(flash_attention, model_config, device, dtype)
except ValueError as e:
    die(str(e))

# ---- model, parallel wrapping, optimizer, state ----
torch.manual_seed(seed)  # the same initial weights on every rank
fsdp = distributed and parallelism == 'fsdp'
zero = distributed and parallelism == 'zero1'
with torch.device('meta' if fsdp else device):  # FSDP: built without memory, filled after sharding (model.py)
    raw_model = GPT(model_config)
full_weights = checkpoint['model'] if checkpoint is not None and 'sharded' not in checkpoint else hf_state
if full_weights is not None and not fsdp:
    raw_model.load_state_dict(full_weights)
model = process_group.parallelize(raw_model, parallelism if distributed else None, device, dtype,
                                  dict(mode=compile_mode, dynamic=compile_dynamic) if compile else None,
                                  fsdp_reshard_after_forward)
if full_weights is not None and fsdp:
    ckpt_files.load_full_model_state(model, full_weights)
optimizers = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type, optimizer, zero)
for _group in (g for opt in optimizers for g in opt.param_groups):
    _group['base_lr'] = _group['lr']  # the schedule scales every group's own learning rate
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
iter_num, best_val_loss, tokens_seen = 0, float('inf'), 0
if checkpoint is not None:
    iter_num, best_val_loss, tokens_seen = ckpt_files.restore_training(checkpoint, model, raw_model, optimizers,
                                                                     scaler, zero)
start_iter, last_saved = iter_num, iter_num
if master:
    for path in stale_files:  # a fresh run's leftovers, removed only once every check has passed
        ckpt_files.remove(path)
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
try:  # the document ids go to the model only for a document mask
    batches = loader.Batches(streams, meta, block_size, batch_size, gradient_accumulation_steps, seed, sampling,
                             device, document_ids=attention_mask == 'document')
except ValueError as e:
    die(str(e))

# ---- the FLOPs per token (as torch's FLOP counter counts them) and the device's peak, for MFU ----
device_name = torch.cuda.get_device_name(device) if device_type == 'cuda' else platform.processor() or device_type
peak, peak_source = perf.peak_tflops(device_type, device_name, dtype, peak_tflops)
if peak is None:
    say(f"warning: {peak_source}")
attention_flops, ffn_flops, head_flops = raw_model.flops_breakdown()
flops_per_token = attention_flops + ffn_flops + head_flops
peak_remeasured = False


@torch.no_grad()
def estimate_loss():
    """Mean cross-entropy per split over eval_iters fixed batches, shared out over the ranks."""
    global eval_noted
    model.eval()
    out, started = {}, time.time()
    steps = math.ceil(eval_iters / world_size)
    bar = monitor.progress_bar(2 * steps, 'evaluating', master)
    for split in ('train', 'val'):
        total = 0.0
        for k in range(rank, steps * world_size, world_size):
            # every rank runs the same number of forwards (FSDP's all-gathers need all of them); extras count 0
            if run_control.stop_request and not distributed:  # a signal during a long evaluation: stop now
                model.train()
                return None
            x, y, doc = batches.eval(split, k % eval_iters)
            with autocast, attention_context():
                model(x, y, document_ids=doc)
            total += raw_model.ce_loss.item() if k < eval_iters else 0.0
            if bar is not None:
                bar.update()
            if not eval_noted and k == rank and split == 'train' and (time.time() - started) * 2 * steps > 60:
                eval_noted = True  # a slow evaluation is said once, so a quiet console is not mistaken for a hang
                say(f"evaluating 2 x {eval_iters} batches takes about "
                    f"{monitor.duration((time.time() - started) * 2 * steps)} here (lower eval_iters to shorten it)")
        out[split] = sum_over_ranks(torch.tensor([total], dtype=torch.float64, device=device)).item() / eval_iters
    if bar is not None:
        bar.close()
    model.train()
    return out


eval_noted = False


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


# ---- run log (runlog.py): a .jsonl appended per line, the whole .json at the end, CSV, wandb; rank 0 only ----
hardware = {'device': device, 'device_name': device_name, 'world_size': world_size,
            'parallelism': parallelism if distributed else 'single', 'dtype': dtype, 'compile': compile,
            'attention_kernel': attention_kernel}
header = {'run_name': wandb_run_name or os.path.basename(os.path.abspath(out_dir)),
          'start_time': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'config': config,
          'startup_info': run_control.startup_info(model_config, raw_model, batch_size, gradient_accumulation_steps,
                                                   hardware, (flops_per_token, attention_flops, ffn_flops), peak,
                                                   peak_source, seed, (data_dir, batches.sampling, streams, meta),
                                                   checkpoint)}
run_log = runlog.RunLog(out_dir, header, master, wandb_project if wandb_log else None,
                        [f'{t}_{k}' for t in task_names for k in ('acc', 'acc_norm', 'perplexity')])


def save_checkpoint(reason, best=False):
    """Collective: every rank calls it; best=True also writes best.pt. A failed write (disk full, no permission)
    leaves the previous checkpoint as it was and stops every rank with one line naming the path and the reason."""
    global last_saved
    train_state = {'model_args': asdict(model_config), 'iter_num': iter_num, 'best_val_loss': best_val_loss,
                   'tokens_seen': tokens_seen, 'seed': seed,  # with iter_num, all the sampler state (loader.py)
                   'world_size': world_size, 'config': config, 'meta': meta,
                   **({'scaler': scaler.state_dict()} if scaler.is_enabled() else {})}
    path, failed = ckpt_files.save_training(model, raw_model, optimizers, zero, train_state, out_dir,
                                            checkpoint_format == 'sharded', best, master)
    if any_rank(failed):
        if failed:  # the rank(s) that failed say why
            print(f"error: {failed}; the previous checkpoint is untouched", file=sys.stderr)
        finish('checkpoint failed', 1)
    if master:
        for old in ckpt_files.list_checkpoints(out_dir)[keep_last_n:]:
            ckpt_files.remove(old)
    run_log.checkpoint({'iter': iter_num, 'path': path, 'reason': reason})
    last_saved = iter_num


def finish(reason, status=0):
    try:
        run_log.finish({'best_val_loss': best_val_loss if best_val_loss < float('inf') else None,
                        'total_time_s': round(time.time() - START, 3), 'tokens_seen': tokens_seen,
                        'iterations': iter_num, 'stop_reason': reason})
    except OSError as e:
        say(f"warning: could not write the run log ({e.strerror or e}); the .jsonl beside it has the run")
    say(f"stopped at iteration {iter_num}: {reason}")
    if distributed:
        dist.barrier()  # no rank tears down gloo/NCCL while another still writes (that can abort the process)
        dist.destroy_process_group()
    sys.exit(status)


def stop_non_finite(value):
    if master:
        print(f"error: loss is {value} at iteration {iter_num}; stopping without saving (the last checkpoint is "
              f"untouched). Try a lower learning_rate or a grad_clip.", file=sys.stderr)
    finish('non-finite loss', 1)


def evaluate_and_checkpoint(stop):
    """Losses (and downstream scores) on both splits, logged; a checkpoint; the stop reason after it."""
    global best_val_loss, t_log, timed_iters
    losses, scores = estimate_loss(), {}
    if losses is None:
        return run_control.stop_request  # cut short by a signal: checkpoint (if there is progress) and stop
    if task_names and (stop or iter_num % (eval_tasks_interval or eval_interval) == 0):
        # FSDP ranks must run the same forwards: each scores every item; otherwise items are shared out
        with attention_context():
            scores = downstream.evaluate(model if fsdp else raw_model, task_tokenizer, task_names, block_size,
                                         device, autocast, eval_tasks_limit or None,
                                         eval_tasks_dir or downstream.DATA_DIR, 0 if fsdp else rank,
                                         1 if fsdp else world_size,
                                         sum_over_ranks if distributed and not fsdp else None)
    say_note(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}" + ''.join(
        f", {t} {r.get('acc_norm', r['acc']):.4f}" for t, r in scores.items()))
    run_log.evaluation({'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val'],
                        'val_bits_per_byte': bits_per_byte(losses['val'], 'val'),
                        'time_s': round(time.time() - START, 3), **({'downstream': scores} if scores else {})})
    if not math.isfinite(losses['val']):
        stop_non_finite(losses['val'])
    improved = losses['val'] < best_val_loss
    best_val_loss = min(best_val_loss, losses['val'])
    if iter_num > start_iter and save_checkpoints:
        save_checkpoint(stop or 'eval', best=improved and checkpoint_format == 'full')
    if target_val_loss is not None and losses['val'] <= target_val_loss and stop is None:
        stop = 'target_val_loss'
    t_log, timed_iters = time.time(), 0  # evaluation and checkpoint time stay out of the throughput figures
    return stop


def log_line():
    """Every log_interval iterations: the one host sync, where the ranks also agree on stopping. Returns the stop."""
    global iteration_losses, aux_sum, expert_sum, stats, recent_losses, timed_iters, t_log, peak, peak_source, \
        peak_remeasured
    time_up = max_time is not None and time.time() - train_start >= max_time
    flags = torch.tensor(run_control.stop_votes(time_up), device=device, dtype=torch.float64)
    totals = sum_over_ranks(torch.cat([torch.stack(iteration_losses), aux_sum.view(1), flags])).tolist()
    # the mean loss over every micro-step of every rank since the last line
    per_iteration = [t / gradient_accumulation_steps for t in totals[:-4]]
    stop = run_control.stop_reason(totals[-3:])
    mean_loss = sum(per_iteration) / len(per_iteration)
    recent_losses = (recent_losses + per_iteration)[-loss_window:]
    if device_type == 'cuda':
        torch.cuda.synchronize()  # the clock must not run ahead of the device
    warm = timed_iters == 0  # only the warm-up step since the last line: its time is all there is
    dt = warmup_s if warm else (time.time() - t_log) / timed_iters
    tokens_per_sec = tokens_per_iter / dt
    achieved_tflops = flops_per_token * tokens_per_sec / world_size / 1e12  # the model's FLOP/s per device
    if peak and achieved_tflops > peak and peak_source.startswith('measured') and not peak_remeasured:
        peak_remeasured, stale = True, peak  # a CPU peak measured on a busy machine: measured again, once
        peak, peak_source = perf.measure_cpu_peak_tflops(dtype, again=True)  # (the best measurement is kept)
        say_note(f"note: {achieved_tflops:.4f} TFLOP/s reached, above the cached CPU peak {stale:.4f}; measured again: "
                 f"{peak:.4f} TFLOP/s")
        run_log.update_startup(performance={**header['startup_info']['performance'], 'peak_tflops': peak,
                                            'peak_source': peak_source, 'tokens_per_sec_at_50_mfu':
                                            0.5 * peak * 1e12 * world_size / flops_per_token})
    norm = grad_norm.full_tensor() if hasattr(grad_norm, 'full_tensor') else grad_norm
    entry = {'iter': iter_num, 'loss': mean_loss,
             'loss_variance': statistics.pvariance(recent_losses) if len(recent_losses) > 1 else 0.0,
             'aux_loss': totals[-4] / (len(per_iteration) * gradient_accumulation_steps) if n_expert else None,
             'lr': get_lr(iter_num - 1), 'grad_norm': float(norm),
             'grad_clipped': bool(grad_clip and float(norm) > grad_clip), **stats,
             'time_ms': dt * 1000, 'tokens_per_sec': tokens_per_sec, 'tokens_seen': tokens_seen,
             'epoch': batches.epoch(iter_num), 'warmup': warm,
             'mfu': achieved_tflops / peak if peak else None,  # MFU: the model's FLOP/s over the device's peak
             'achieved_tflops': achieved_tflops, 'flops_per_token': flops_per_token,
             'eta_s': run_control.eta_s(train_start, iter_num - start_iter, max_iters - iter_num, max_time),
             **monitor.memory_stats(device_type, device)}
    if expert_sum is not None:  # share of routed slots per expert, per layer, over the interval and all ranks
        expert_totals = sum_over_ranks(expert_sum)  # each row: slots of every micro-step of every rank
        entry['expert_fractions'] = (expert_totals / expert_totals.sum(dim=1, keepdim=True)).tolist()
        expert_sum = None
    run_log.iteration(entry)
    if not math.isfinite(mean_loss):
        stop_non_finite(mean_loss)
    # above 100% the peak is wrong (a peak_tflops setting, a datasheet entry): said on the line, never hidden
    peak_note = ' (above the peak: check peak_tflops)' if entry['mfu'] is not None and entry['mfu'] > 1 else ''
    if bar is not None:  # progress=True on a terminal: one bar, the numbers in its postfix
        bar.update(iter_num - bar.n)
        bar.set_postfix_str(f"loss {mean_loss:.4f}, {dt * 1000:.0f} ms/iter, MFU {entry['mfu'] or 0:.1%}{peak_note}")
    else:
        say(run_control.console_line(entry, peak_note))
    iteration_losses, aux_sum, stats = [], zeros(), {}
    timed_iters, t_log = 0, time.time()
    return stop


def after_step():
    """The profiler's schedule; the first step's report (compilation, allocator warm-up), apart from throughput."""
    global profiler, warmup_s, t_log, timed_iters
    if profiler is not None:
        profiler.step()
        if iter_num - start_iter == 6:
            profiler.stop()
            profiler = None
            say(f"profile written to {out_dir}/profile_trace_rank*.json")
    if warmup_s is None:
        if device_type == 'cuda':
            torch.cuda.synchronize()
        warmup_s = time.time() - t_log
        state = monitor.state_bytes(raw_model, [optimizers[0].optim] if zero else optimizers)  # ZeRO-1: the share
        run_log.update_startup(warmup_s=round(warmup_s, 3), memory_per_rank=state)
        say(run_control.first_step_report(warmup_s, state, compile))
        t_log, timed_iters = time.time(), 0
    elif timed_iters == 1 and iter_num == start_iter + 2 and device_type != 'cuda' and master:
        note = run_control.pace_note(time.time() - t_log, max_iters - iter_num, device_type)
        if note:
            say_note(note)


def stop_between_log_lines():
    """One process checks every step; ranks agree only at log lines, where they synchronise anyway."""
    if distributed:
        return None
    return run_control.stop_reason(run_control.stop_votes(max_time is not None and
                                                          time.time() - train_start >= max_time))


def sum_over_shards(t):  # FSDP ranks hold different shards; DDP/ZeRO-1 ranks hold the same full gradients
    return sum_over_ranks(t) if fsdp else t


def zeros():
    return torch.zeros((), device=device, dtype=torch.float64)  # fp64: sums exact in any order


bar = None
say_note = say
if eval_only:  # ---- evaluate only ----
    losses = estimate_loss()
    result = {split: {'loss': loss, 'perplexity': math.exp(loss), 'bits_per_byte': bits_per_byte(loss, split)}
              for split, loss in losses.items()}
    for split, r in result.items():
        say(f"{split}: loss {r['loss']:.4f}, perplexity {r['perplexity']:.2f}, bits/byte {r['bits_per_byte']:.4f}")
    run_log.evaluation({'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val'], 'eval': result})
    finish('eval_only')

say(monitor.startup_report(header['startup_info']))
run_control.catch_stop_signals(say)
iteration_losses, aux_sum, recent_losses, expert_sum = [], zeros(), [], None
timed_iters, grad_norm, stop, warmup_s, stats = 0, torch.zeros(()), None, None, {}
next_batch = batches.prefetch(iter_num, rank)
profiler = run_control.start_profiler(out_dir, device_type, rank) if profile else None
bar = monitor.progress_bar(max_iters, 'training', progress and master, initial=iter_num)
say_note = bar.write if bar is not None else say
t_log = train_start = time.time()
# ---- the training loop ----
while True:
    if iter_num >= max_iters:
        stop = 'max_iters'
    if eval_iters and (iter_num % eval_interval == 0
                       and not (iter_num == start_iter and (checkpoint is not None or not eval_at_start))
                       or stop in ('max_iters', 'max_time') and iter_num != start_iter):
        stop = evaluate_and_checkpoint(stop)
    if stop:
        if last_saved != iter_num and save_checkpoints:
            save_checkpoint(stop)
        finish(stop, run_control.EXIT_STATUS.get(stop, 0))

    # ======================== one training step ========================
    will_log = (iter_num + 1) % log_interval == 0 or iter_num + 1 == max_iters  # this step ends on a log line
    layer_stats = will_log and (iter_num + 1) % grad_stats_interval == 0
    lr_scale = get_lr(iter_num) / learning_rate if learning_rate else 0.0
    for group in (g for opt in optimizers for g in opt.param_groups):
        group['lr'] = group['base_lr'] * lr_scale
    loss_sum = zeros()
    for j in range(local_accumulation):
        micro_step = rank + j * world_size  # rank r takes global micro-steps r, r+W, r+2W, ...
        last = j == local_accumulation - 1
        x, y, doc, dropout_seed = next_batch.result()
        torch.manual_seed(dropout_seed)  # dropout masks follow the micro-step, not the rank
        if fsdp:
            model.set_requires_gradient_sync(last)  # reduce-scatter gradients only after the last micro-step
        elif distributed:
            model.require_backward_grad_sync = last  # DDP: all-reduce only after the last micro-step
        with autocast, attention_context():
            _, loss = model(x, y, document_ids=doc)
        # read the next micro-batch in the background while this one computes
        next_batch = batches.prefetch(iter_num, micro_step + world_size) if not last else batches.prefetch(iter_num + 1, rank)
        loss_sum = loss_sum + raw_model.ce_loss
        if raw_model.aux_loss is not None:
            aux_sum = aux_sum + raw_model.aux_loss
            fractions = torch.stack(raw_model.expert_fractions()).double()
            expert_sum = fractions if expert_sum is None else expert_sum + fractions
        scaler.scale(loss / local_accumulation).backward()  # ranks average, so each micro-step weighs 1/G
    iteration_losses.append(loss_sum)
    for opt in optimizers:
        scaler.unscale_(opt)
    if will_log:  # before clipping, like the norm below
        stats = monitor.grad_stats(raw_model, sum_over_shards, per_layer=layer_stats)
    if grad_clip or will_log:  # the global norm before clipping (for FSDP too); max_norm=inf only measures it
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float('inf'))
    weights_before = monitor.snapshot_weights(raw_model) if layer_stats else None
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    if weights_before is not None:
        stats['update_to_weight'] = monitor.update_ratios(raw_model, weights_before, sum_over_shards)
    iter_num += 1
    timed_iters += 1
    tokens_seen += tokens_per_iter
    # ====================================================================

    after_step()
    stop = log_line() if will_log else stop_between_log_lines()

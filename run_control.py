"""
The plumbing of a training run that is not the algorithm: train.py calls it, and reads as the algorithm.

    check_settings     every setting that needs no model, checked at once (one line naming the allowed values)
    choose_start       resume from which checkpoint, or start fresh (and which leftovers a fresh run removes)
    catch_stop_signals Ctrl-C and a scheduler's SIGTERM/SIGUSR1 become a checkpoint and a clean stop
    stop_reason        what the ranks' votes (preempted, interrupted, max_time) agree on
    startup_info       what the start-up report and the run log's header say of the run
    first_step_report, pace_note, start_profiler, console_line: the lines a run prints as it goes
"""
import glob
import os
import signal
import sys
import time
from dataclasses import asdict

import torch

import checkpoint as ckpt_files
import loader
import monitor
from errors import die
from process_group import from_rank_0

EXIT_STATUS = {'interrupted': 130, 'preempted': 75}  # 75 (EX_TEMPFAIL): checkpointed, run the same command again
stop_request = None  # 'interrupted' (Ctrl-C) or 'preempted' (SIGTERM, SIGUSR1: a scheduler taking the machine back)


def check_settings(c, distributed, world_size, hub_names):
    """Die on the first invalid setting of the config dict c. The first call of a run: it also clears a stop
    request that an earlier run in this process received (this module outlives an in-process run)."""
    global stop_request
    stop_request = None
    choices = {'lr_schedule': ('cosine', 'linear', 'wsd'), 'parallelism': ('ddp', 'zero1', 'fsdp'),
               'optimizer': ('adamw', 'muon'), 'compile_mode': ('default', 'reduce-overhead', 'max-autotune'),
               'flash_attention': ('auto', 'require', 'off'), 'checkpoint_format': ('full', 'sharded'),
               'sampling': loader.SAMPLING, 'dtype': ('auto', 'float32', 'bfloat16', 'float16')}
    init_from = c['init_from']
    if init_from not in ('scratch', 'resume', 'auto', *hub_names) and not init_from.startswith('hf:'):
        die(f"init_from={init_from!r} is invalid; allowed: scratch, resume, auto, hf:<dir>, {', '.join(hub_names)}")
    for key, allowed in choices.items():
        if c[key] not in allowed:
            die(f"{key}={c[key]!r} is invalid; allowed: {', '.join(allowed)}")
    if c['optimizer'] == 'muon' and not hasattr(torch.optim, 'Muon'):
        die(f"optimizer='muon' needs torch>=2.9 (torch.optim.Muon); this is torch {torch.__version__}")
    if c['optimizer'] == 'muon' and distributed and c['parallelism'] != 'ddp':
        die(f"optimizer='muon' needs whole weight matrices: use parallelism='ddp' (not {c['parallelism']!r})")
    if c['checkpoint_format'] == 'sharded' and not (distributed and c['parallelism'] == 'fsdp'):
        die("checkpoint_format='sharded' needs parallelism='fsdp' under torchrun")
    if c['gradient_accumulation_steps'] < 1 or c['batch_size'] < 1:
        die("batch_size and gradient_accumulation_steps must be at least 1")
    if c['gradient_accumulation_steps'] % world_size:
        die(f"gradient_accumulation_steps={c['gradient_accumulation_steps']} is not divisible by the world size "
            f"{world_size}")


def choose_start(out_dir, init_from, resume_from, eval_only, overwrite, parallelism, world_size, say):
    """(checkpoint or None, leftover files a fresh run removes once every check has passed).
    Rank 0 decides and picks the checkpoint; every rank loads that one."""
    master = int(os.environ.get('RANK', 0)) == 0
    if master and os.path.isdir(out_dir):
        ckpt_files.recover_interrupted_swap(out_dir)
    if init_from == 'auto':
        resuming = from_rank_0(bool(ckpt_files.list_checkpoints(out_dir) or resume_from))
        say("init_from='auto': " + ('resuming' if resuming else f"no checkpoint in {out_dir!r}, starting from scratch"))
    else:
        resuming = init_from == 'resume'
    checkpoint = None
    if resuming or eval_only:
        try:
            checkpoint, path = ckpt_files.load_for_resume(out_dir, resume_from, eval_only)
        except ckpt_files.ResumeError as e:
            die(str(e))
        if 'sharded' in checkpoint and (parallelism != 'fsdp' or checkpoint['world_size'] != world_size):
            die(f"{path} is a sharded checkpoint from {checkpoint['world_size']} FSDP ranks; resume it with "
                f"parallelism='fsdp' on {checkpoint['world_size']} ranks")
        say(f"resuming from {path} (iteration {checkpoint['iter_num']})")
    stale_files = []
    if checkpoint is None and from_rank_0(bool(ckpt_files.list_checkpoints(out_dir) or
                                                os.path.exists(os.path.join(out_dir, 'best.pt')))):
        if not overwrite:
            die(f"{out_dir!r} already holds checkpoints; use --init_from=resume to continue or --overwrite=True to "
                f"start over")
        stale_files = ckpt_files.list_checkpoints(out_dir) + glob.glob(os.path.join(out_dir, 'best.pt')) + \
            glob.glob(os.path.join(out_dir, 'metrics.csv'))
    return checkpoint, stale_files


def catch_stop_signals(say):
    """Ctrl-C, SIGTERM and SIGUSR1 set stop_request: the loop finishes its iteration, checkpoints and stops."""
    def on_signal(signum, frame):
        global stop_request
        if signum == signal.SIGINT and stop_request == 'interrupted':  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        stop_request = 'interrupted' if signum == signal.SIGINT else 'preempted'
        say(f"\n{signal.Signals(signum).name}: finishing this iteration, then checkpointing")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, on_signal)


def stop_votes(time_up):
    """This rank's votes, in the order stop_reason reads them."""
    return [stop_request == 'preempted', stop_request == 'interrupted', time_up]


def stop_reason(votes):
    """The first reason any rank voted for (votes summed over the ranks), or None."""
    return next((reason for reason, vote in zip(('preempted', 'interrupted', 'max_time'), votes) if vote), None)


def startup_info(model_config, raw_model, batch_size, gradient_accumulation_steps, hardware, flops, peak,
                 peak_source, seed, dataset, checkpoint):
    """The run log's startup_info (the start-up report prints it: monitor.startup_report). dataset: (data_dir,
    sampling, streams, meta)."""
    c = model_config
    hardware = {**hardware, 'device_memory_gb': device_memory_gb(hardware['device'])}
    hardware = {k: hardware[k] for k in ('device', 'device_name', 'world_size', 'parallelism', 'device_memory_gb',
                                         'dtype', 'compile', 'attention_kernel')}  # the order the log has always had
    data_dir, sampling, streams, meta = dataset
    dataset = {'dir': data_dir, 'sampling': sampling, 'shards': len(streams['train'].paths),
               **{k: meta.get(k) for k in ('vocab_size', 'train_tokens', 'val_tokens', 'train_documents', 'source',
                                           'source_sha256', 'fingerprint')}}
    world_size = hardware['world_size']
    flops_per_token, attention_flops, ffn_flops = flops
    tokens_per_iter = gradient_accumulation_steps * batch_size * c.block_size
    return {
        'architecture': c.architecture_name(),
        'model_args': asdict(c),
        'parameters': {'total': raw_model.get_num_params(non_embedding=False),
                       'trainable': sum(p.numel() for p in raw_model.parameters() if p.requires_grad),
                       'non_embedding': raw_model.get_num_params(non_embedding=True)},
        'model': {'n_layer': c.n_layer, 'n_head': c.n_head, 'n_kv_head': c.kv_heads, 'n_embd': c.n_embd,
                  'ffn_hidden': c.ffn_hidden_size, 'block_size': c.block_size, 'vocab_size': c.vocab_size},
        'training': {'micro_batch': batch_size, 'gradient_accumulation_steps': gradient_accumulation_steps,
                     'effective_batch': batch_size * gradient_accumulation_steps, 'tokens_per_iter': tokens_per_iter},
        'hardware': hardware,
        'performance': {'flops_per_token': flops_per_token, 'attention_to_ffn_flops': attention_flops / ffn_flops,
                        'peak_tflops': peak, 'peak_source': peak_source,
                        'tokens_per_sec_at_50_mfu': 0.5 * peak * 1e12 * world_size / flops_per_token if peak else None},
        'memory_per_rank': None,  # filled in after the first step, once the optimizer state exists
        'warmup_s': None,
        **monitor.reproducibility_info(hardware['device'].split(':')[0]),
        'seed': seed,
        'dataset': dataset,
        'command': ' '.join([sys.executable, *sys.argv]),
        'resumed_from': {'iter': checkpoint['iter_num']} if checkpoint is not None else None,
    }


def eta_s(started, iterations_done, iterations_left, max_time):
    """Seconds left, from this session's wall time per iteration (evaluations and checkpoints included)."""
    elapsed = time.time() - started
    left = elapsed / max(1, iterations_done) * iterations_left
    return min(left, max(0.0, max_time - elapsed)) if max_time is not None else left


def device_memory_gb(device):
    if device.startswith('cuda'):
        return torch.cuda.get_device_properties(device).total_memory / 1e9
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9


def first_step_report(warmup_s, state, compiled):
    return (f"first step {warmup_s:.2f} s{' (compilation included)' if compiled else ''}; memory per rank: "
            + ', '.join(f"{k.replace('_bytes', '')} {v / 2 ** 20:.2f} MiB" for k, v in state.items()))


def pace_note(seconds_per_iter, iters_left, device_type):
    """A run far longer than a CPU user likely expects (a 124M model): said once, with the measured pace."""
    projected = seconds_per_iter * iters_left
    if projected <= 1800:
        return None
    return (f"note: {seconds_per_iter:.1f} s per iteration on this {device_type}, so the {iters_left:,} iterations "
            f"left take about {monitor.duration(projected)} (plus evaluations). On a CPU, "
            f"config/train_shakespeare_char_cpu.py trains in about a minute.")


def start_profiler(out_dir, device_type, rank):
    """A torch.profiler trace of iterations 3-5 (chrome://tracing or Perfetto opens it)."""
    activities = [torch.profiler.ProfilerActivity.CPU] + \
        ([torch.profiler.ProfilerActivity.CUDA] if device_type == 'cuda' else [])
    profiler = torch.profiler.profile(
        activities=activities, schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
        on_trace_ready=lambda p: p.export_chrome_trace(os.path.join(out_dir, f'profile_trace_rank{rank}.json')))
    profiler.start()
    return profiler


def console_line(entry, peak_note=''):
    """The log line of an iteration entry."""
    return (f"iter {entry['iter']}: loss {entry['loss']:.4f}, lr {entry['lr']:.2e}, grad norm {entry['grad_norm']:.2f}, "
            f"{entry['time_ms']:.1f} ms/iter, {entry['tokens_per_sec']:,.0f} tok/s, epoch {entry['epoch']:.3f}"
            + (f", MFU {entry['mfu']:.1%}{peak_note}" if entry['mfu'] is not None else '')
            + (f", mem {entry['memory_allocated_mb']:,.0f} MiB" if entry['memory_allocated_mb'] else '')
            + f", ETA {monitor.duration(entry['eta_s'])}")

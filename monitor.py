"""
What train.py measures besides the loss: gradient health, update sizes, memory, reproducibility facts and the
start-up report. Plain functions over tensors; the training loop decides when to call them.
"""
import os
import platform
import resource
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def _local(t):
    """A DTensor's local shard (FSDP), or the tensor itself."""
    return t.to_local() if hasattr(t, 'to_local') else t


def state_bytes(raw_model, optimizers):
    """Bytes this rank holds for parameters, gradients (same size) and optimizer state: its shards under FSDP."""
    params = sum(_local(p).nbytes for p in raw_model.parameters())
    states = sum(_local(v).nbytes for opt in optimizers for s in opt.state.values() for v in s.values()
                 if torch.is_tensor(v) and v.dim() > 0)
    return {'parameter_bytes': params, 'gradient_bytes': params, 'optimizer_bytes': states}


def layer_group(name):
    """The group a parameter belongs to for per-group statistics."""
    if name.startswith('blocks.'):
        layer = name.split('.')[1]
        return f'layer{layer}.' + ('attn' if '.attn.' in name else 'ffn' if '.ffn.' in name else 'norm')
    if name.startswith(('wte.', 'wpe.')):
        return 'embedding'
    return 'head' if name.startswith('lm_head.') else 'norm'


def _group_sums(named_tensors, reduce):
    """Per-group sums of squares of tensors (each rank's shards), summed over ranks by `reduce`."""
    names = [n for n, _ in named_tensors]
    squares = torch._foreach_norm([_local(t).float() for _, t in named_tensors])
    groups = sorted({layer_group(n) for n in names})
    sums = torch.zeros(len(groups), device=squares[0].device, dtype=torch.float64)
    index = {g: i for i, g in enumerate(groups)}
    for name, s in zip(names, squares):
        sums[index[layer_group(name)]] += s.double() ** 2
    return groups, reduce(sums)


def grad_stats(raw_model, reduce, per_layer):
    """Gradient health after backward (and unscaling): mean, std, count of non-finite elements and, when
    per_layer, the norm per layer group. reduce(tensor) sums a tensor over ranks (identity in one process)."""
    named = [(n, p.grad) for n, p in raw_model.named_parameters() if p.grad is not None]
    grads = [_local(g).float() for _, g in named]
    totals = torch.stack([sum(g.sum() for g in grads).double(), sum(g.square().sum() for g in grads).double(),
                          sum((~torch.isfinite(g)).sum() for g in grads).double(),
                          torch.tensor(sum(g.numel() for g in grads), dtype=torch.float64, device=grads[0].device)])
    total, square, non_finite, count = reduce(totals).tolist()
    mean = total / count
    stats = {'grad_mean': mean, 'grad_std': max(square / count - mean * mean, 0.0) ** 0.5,
             'grad_non_finite': int(non_finite)}
    if per_layer:
        groups, sums = _group_sums(named, reduce)
        stats['grad_norm_per_layer'] = dict(zip(groups, sums.sqrt().tolist()))
    return stats


def snapshot_weights(raw_model):
    """A copy of the local weights, to measure the size of the next optimizer update against them."""
    return [(n, _local(p).detach().clone()) for n, p in raw_model.named_parameters()]


def update_ratios(raw_model, before, reduce):
    """||w_after - w_before|| / ||w_before|| per layer group: ~1e-3 is healthy, much larger means instability."""
    now = dict(raw_model.named_parameters())
    deltas = [(n, _local(now[n]).detach() - w) for n, w in before]
    groups, delta_sums = _group_sums(deltas, reduce)
    _, weight_sums = _group_sums(before, reduce)
    return {g: (d / w) ** 0.5 if w > 0 else 0.0 for g, d, w in zip(groups, delta_sums.tolist(), weight_sums.tolist())}


def memory_stats(device_type, device):
    """MiB: allocated, peak since the last call and reserved on CUDA; the resident set (and its peak since the
    process started, which the OS cannot reset) on a CPU."""
    if device_type == 'cuda':
        stats = {'memory_allocated_mb': torch.cuda.memory_allocated(device) / 2 ** 20,
                 'memory_peak_mb': torch.cuda.max_memory_allocated(device) / 2 ** 20,
                 'memory_reserved_mb': torch.cuda.memory_reserved(device) / 2 ** 20}
        torch.cuda.reset_peak_memory_stats(device)
        return stats
    try:
        with open('/proc/self/statm') as f:
            rss = int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20
    except OSError:
        rss = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == 'darwin' else 2 ** 10)
    return {'memory_allocated_mb': rss, 'memory_peak_mb': peak, 'memory_reserved_mb': None}


def _version(module):
    try:
        return __import__(module).__version__
    except Exception:
        return None


def reproducibility_info(device_type):
    """Git commit and dirty flag, library versions and device names: what it takes to rerun a result."""
    def git(*args):
        try:
            return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ''
    commit = git('rev-parse', 'HEAD') or None
    return {
        'git_commit': commit,
        'git_dirty': bool(git('status', '--porcelain', '--untracked-files=no')) if commit else None,
        'versions': {'python': platform.python_version(), 'torch': torch.__version__,
                     'cuda': torch.version.cuda, 'numpy': _version('numpy'), 'tiktoken': _version('tiktoken'),
                     'sentencepiece': _version('sentencepiece')},
        'devices': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if device_type == 'cuda' else [platform.processor() or platform.machine()],
        'hostname': platform.node(),
    }


def startup_report(info):
    """The start-up report as text, from the run log's startup_info."""
    m, t, h, p = info['model'], info['training'], info['hardware'], info['performance']
    params = info['parameters']
    lines = [
        'Model architecture',
        f"  name                 {info['architecture']}",
        f"  layers / heads / kv  {m['n_layer']} / {m['n_head']} / {m['n_kv_head']}",
        f"  hidden size          {m['n_embd']} (FFN {m['ffn_hidden']})",
        f"  sequence length      {m['block_size']}",
        f"  vocabulary           {m['vocab_size']}",
        f"  parameters           {params['total']:,} total, {params['trainable']:,} trainable, "
        f"{params['non_embedding']:,} non-embedding",
        'Training configuration',
        f"  micro batch          {t['micro_batch']} sequences",
        f"  accumulation         {t['gradient_accumulation_steps']} micro-steps",
        f"  effective batch      {t['effective_batch']} sequences, {t['tokens_per_iter']:,} tokens per iteration",
        'Hardware',
        f"  device               {h['device']} ({h['device_name']}) x {h['world_size']}, {h['parallelism']}",
        f"  memory               {h['device_memory_gb']:.1f} GB" if h['device_memory_gb'] else '  memory               -',
        f"  precision            {h['dtype']}, compile={h['compile']}, attention: {h['attention_kernel']}",
        'Theoretical performance',
        f"  FLOPs per token      {p['flops_per_token'] / 1e6:,.2f} M (attention:FFN {p['attention_to_ffn_flops']:.2f})",
    ]
    if p['peak_tflops']:
        lines += [f"  peak per device      {p['peak_tflops']:,.2f} TFLOP/s ({p['peak_source']})",
                  f"  at 50% MFU           {p['tokens_per_sec_at_50_mfu']:,.0f} tokens/s"]
    else:
        lines.append(f"  peak per device      unknown ({p['peak_source']})")
    return '\n'.join(lines)


def duration(seconds):
    """A duration for people: 45s, 12m30s, 3h05m, 2.4 days."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    if seconds < 2 * 86400:
        return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
    return f'{seconds / 86400:.1f} days'


def progress_bar(total, description, enabled=True, initial=0):
    """A tqdm bar when stdout is an interactive terminal (and tqdm is installed), else None."""
    if not enabled or not sys.stdout.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=description, leave=False, dynamic_ncols=True)

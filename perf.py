"""
Peak throughput of the device a run uses, for MFU = achieved FLOP/s / peak FLOP/s (train.py does that sum).

GPUs: dense (not 2:4-sparse) tensor-core TFLOP/s from the vendors' datasheets, per precision. fp32 training
runs its matmuls on TF32 tensor cores (train.py turns TF32 on), so 'float32' looks up the TF32 figure.
GeForce cards accumulate in fp32 at half rate, which is what bf16 training uses, so that figure is listed.
CPUs: no table can know them, so the peak is measured once per machine (best of several matmul sizes and repeats
in the training dtype) and cached with where it came from, so runs on one machine report comparable MFUs.
"""
import dataclasses
import json
import os
import platform
import re
import time
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

import document_attention
import files

# (model words that must all appear as whole words of torch.cuda.get_device_name(), {precision: dense TFLOP/s});
# the first match wins, so variants come before the plain model (H100 PCIe before H100). Whole words, so 'L40'
# is not an 'L4' and 'RTX A1000' not an 'A100'; a 'Ti', 'SUPER', laptop or MIG variant must be listed as such. 'bf16' is also
# the fp16 figure; cards without bf16 or TF32 units (V100, T4) list fp16 tensor cores and plain fp32 there.
# Figures: NVIDIA datasheets, sparse figures halved; GeForce cards at fp32 accumulation (Ada/Ampere whitepapers).
GPU_PEAK_TFLOPS = [
    (('B200',), {'bf16': 2250.0, 'tf32': 1100.0}),
    (('GH200',), {'bf16': 989.4, 'tf32': 494.7}),
    (('H200', 'NVL'), {'bf16': 835.5, 'tf32': 417.5}),
    (('H200',), {'bf16': 989.4, 'tf32': 494.7}),  # SXM
    (('H100', 'PCIE'), {'bf16': 756.0, 'tf32': 378.0}),
    (('H100', 'NVL'), {'bf16': 835.5, 'tf32': 417.5}),
    (('H100',), {'bf16': 989.4, 'tf32': 494.7}),  # SXM
    (('A100',), {'bf16': 312.0, 'tf32': 156.0}),  # SXM and PCIe alike
    (('L40S',), {'bf16': 362.05, 'tf32': 183.0}),
    (('L40',), {'bf16': 181.05, 'tf32': 90.5}),
    (('L4',), {'bf16': 121.0, 'tf32': 60.0}),
    (('A40',), {'bf16': 149.7, 'tf32': 74.8}),
    (('A10',), {'bf16': 125.0, 'tf32': 62.5}),  # not the A10G, whose figures NVIDIA does not publish
    (('RTX', 'A6000'), {'bf16': 154.8, 'tf32': 77.4}),
    (('RTX', '4090'), {'bf16': 165.2, 'tf32': 82.6}),
    (('RTX', '3090'), {'bf16': 71.0, 'tf32': 35.6}),
    (('RTX', '3060'), {'bf16': 25.6, 'tf32': 12.8}),
    (('V100', 'PCIE'), {'bf16': 112.0, 'tf32': 14.0}),
    (('V100',), {'bf16': 125.0, 'tf32': 15.7}),  # SXM2
    (('T4',), {'bf16': 65.0, 'tf32': 8.1}),
]
VARIANT_WORDS = {'TI', 'SUPER', 'LAPTOP', 'MOBILE', 'MAX', 'MIG'}  # Max-Q, MIG slices: not the listed card's peak


def gpu_peak_tflops(device_name, dtype):
    """Dense peak TFLOP/s of a GPU by its name for 'float32'/'bfloat16'/'float16', or None if not in the table."""
    words = set(re.split(r'[\s_-]+', device_name.upper()))
    for model, peaks in GPU_PEAK_TFLOPS:
        if words >= set(model) and not (words & VARIANT_WORDS) - set(model):
            return peaks['tf32'] if dtype == 'float32' else peaks['bf16']
    return None


def default_device():
    return 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'


def auto_dtype(device_type):
    """dtype='auto': bfloat16 on GPUs with bf16 tensor cores (Ampere and newer), float16 (with a GradScaler in
    training) on older GPUs, float32 elsewhere."""
    if device_type != 'cuda':
        return 'float32'
    # plain is_bf16_supported() also counts emulation: a V100 or T4 would run bf16 in software, without tensor cores
    return 'bfloat16' if torch.cuda.is_bf16_supported(including_emulation=False) else 'float16'


def cpu_peak_cache_path():
    """Where measured CPU peaks are kept: $MODGPT_CACHE_DIR, else $XDG_CACHE_HOME/modgpt, else ~/.cache/modgpt."""
    folder = os.environ.get('MODGPT_CACHE_DIR') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'modgpt')
    return os.path.join(folder, 'cpu_peak.json')


def _matmul_tflops(dtype, size, repeats):
    """(best TFLOP/s of repeats size x size matmuls in dtype, seconds the first one took)."""
    a = torch.randn(size, size).to(getattr(torch, dtype))
    b = torch.randn(size, size).to(getattr(torch, dtype))
    start = time.perf_counter()
    a @ b  # warm-up: thread pool, packing buffers
    first = time.perf_counter() - start
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e12, first


def measure_cpu_peak_tflops(dtype, sizes=(1024, 2048, 3072), repeats=5, again=False):
    """(TFLOP/s, source): the best of several matmul sizes and repeats in dtype on this CPU, measured once per
    machine, thread count, dtype and torch version, then read from the cache file. again=True measures anew (a
    run went faster than the cached peak, so that one was taken on a busy machine); the best measurement is kept."""
    key = f"{platform.processor() or platform.machine()}|{os.cpu_count()} cpus|{torch.get_num_threads()} threads|" \
          f"{dtype}|torch {torch.__version__}"
    path = cpu_peak_cache_path()
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    if key not in cache or again:
        best, measured = _matmul_tflops(dtype, 256, repeats)[0], [256]
        seconds = 2 * 256 ** 3 / best / 1e12
        for size in sizes:
            # a CPU without fast units for the dtype (bf16 without AVX-512 or AMX: a 3072 matmul takes a minute)
            # is measured on the sizes that take seconds, not minutes
            if seconds * (size / measured[-1]) ** 3 * (repeats + 1) > 5:
                break
            tflops, seconds = _matmul_tflops(dtype, size, repeats)
            best, measured = max(best, tflops), measured + [size]
        if best > cache.get(key, {}).get('tflops', 0):
            cache[key] = {'tflops': best, 'measured': time.strftime('%Y-%m-%d %H:%M'),
                          'how': f'best of {repeats} matmuls at each of sizes {", ".join(map(str, measured))}'}
        try:  # a read-only home only costs the next run a new measurement
            os.makedirs(os.path.dirname(path), exist_ok=True)
            files.write_json(path, cache)
        except OSError:
            pass
    entry = cache[key]
    return entry['tflops'], f"measured {dtype} matmul, {entry['measured']} ({path})"


def peak_tflops(device_type, device_name, dtype, override=None):
    """(peak TFLOP/s or None, where it came from). override is the peak_tflops setting and always wins."""
    if override:
        return float(override), 'peak_tflops setting'
    if device_type == 'cpu':
        return measure_cpu_peak_tflops(dtype)
    if device_type == 'cuda':
        peak = gpu_peak_tflops(device_name, dtype)
        return (peak, 'datasheet') if peak else (None, f'unknown GPU {device_name!r}: set peak_tflops for MFU')
    return None, f'no peak known for {device_type}: set peak_tflops for MFU'


class RecordOps(TorchDispatchMode):
    """Notes the name of every aten op that runs inside it."""
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def sdpa_backend_in_use(config, device, dtype, attention_context):
    """Run one attention call of the model's shape under attention_context() and name the kernel SDPA picked."""
    if config.attention_backend == 'manual':
        return 'manual'
    # what training runs: the run's sequence length, inputs that need gradients (SDPA picks kernels by both);
    # zeros, so the probe draws nothing from the random generator
    T, gqa = config.block_size, config.kv_heads != config.n_head
    q = torch.zeros(1, config.n_head, T, config.head_dim, device=device, dtype=dtype, requires_grad=True)
    kv = torch.zeros(1, config.kv_heads, T, config.head_dim, device=device, dtype=dtype, requires_grad=True)
    # a document mask is a boolean mask, which FlashAttention on CUDA does not take: probe with one too
    mask = torch.ones(T, T, dtype=torch.bool, device=device).tril() if config.attention_mask == 'document' else None
    try:
        with attention_context(), RecordOps() as record:
            torch.nn.functional.scaled_dot_product_attention(q, kv, kv, attn_mask=mask, is_causal=mask is None,
                                                             enable_gqa=gqa)
    except RuntimeError as e:
        return f'none: {str(e).splitlines()[0]}'
    ops = ' '.join(record.names)
    for fragment, name in (('flash_attention_for_cpu', 'flash (CPU kernel)'), ('flash', 'flash'), ('cudnn', 'cudnn'),
                           ('efficient', 'memory-efficient')):
        if fragment in ops:
            return name
    if gqa and str(device).startswith('cuda'):  # e.g. flash_attention='off' with grouped-query attention
        return 'math (enable_gqa: the memory-efficient kernel does not take it)'
    return 'math'


def attention_context(flash_attention):
    """A factory of contexts that restrict SDPA's kernels as flash_attention (auto | require | off) asks."""
    kernels = {'auto': None, 'require': [SDPBackend.FLASH_ATTENTION],
               'off': [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]}[flash_attention]
    return (lambda: sdpa_kernel(kernels)) if kernels else nullcontext


def why_no_flash_attention(config, device, dtype):
    """Why FlashAttention cannot run for this model, device and dtype, or None."""
    head = config.head_dim
    return ('it needs CUDA' if not str(device).startswith('cuda') else
            'it needs compute capability 8.0 or newer' if torch.cuda.get_device_capability(device) < (8, 0) else
            f'it needs dtype bfloat16 or float16, not {dtype}' if dtype == 'float32' else
            "attention_backend is 'manual'" if config.attention_backend != 'sdpa' else
            "attention_mask='document' runs FlexAttention (or SDPA with a boolean mask), not FlashAttention; "
            "flash_attention='auto' takes it" if config.attention_mask == 'document' else
            f'head size {head} is not a multiple of 8 up to 256' if head % 8 or head > 256 else None)


def attention_for_run(flash_attention, config, device, dtype, document_ids=True):
    """(context factory entered around every forward, name of the SDPA kernel that runs). Raises ValueError when
    flash_attention='require' cannot be kept, with the reason, instead of a silent fallback. document_ids=False:
    the run's forwards take none (eval.py), so a document mask never applies."""
    if not document_ids:  # the forwards see no document ids: the model attends causally, as without the mask
        config = dataclasses.replace(config, attention_mask='causal')
    why = why_no_flash_attention(config, device, dtype) if flash_attention == 'require' else None
    if why:
        raise ValueError(f"flash_attention='require' but FlashAttention cannot run here: {why}")
    context = attention_context(flash_attention)
    kernel = sdpa_backend_in_use(config, device, getattr(torch, dtype), context)
    if document_attention.uses_flex(config, torch.device(device).type, training=False):  # document masks on CUDA
        why = document_attention.why_flex_fails(config, device, getattr(torch, dtype))
        if why:  # found now, not at the first forward: FlexAttention compiles through Triton (a C compiler, Python.h)
            raise ValueError(f"attention_mask='document' runs FlexAttention on {device}, which failed here: {why}; "
                             f"attention_backend='manual' keeps the document mask without it")
        kernel = 'flex' + (f' (training with dropout: {kernel})' if config.dropout else '')
    if flash_attention == 'require' and kernel != 'flash':
        raise ValueError(f"flash_attention='require' but SDPA does not run FlashAttention for this model ({kernel})")
    return context, kernel

"""
Peak throughput of the device a run uses, for MFU = achieved FLOP/s / peak FLOP/s (train.py does that sum).

GPUs: dense (not 2:4-sparse) tensor-core TFLOP/s from the vendors' datasheets, per precision. fp32 training
runs its matmuls on TF32 tensor cores (train.py turns TF32 on), so 'float32' looks up the TF32 figure.
GeForce cards accumulate in fp32 at half rate, which is what bf16 training uses, so that figure is listed.
CPUs: no table can know them, so the peak is measured with a short matmul in the training dtype.
"""
import time

import torch

# (name fragments that must all appear in torch.cuda.get_device_name(), {precision: dense TFLOP/s});
# the first match wins, so the more specific names come first (H100 PCIe before H100, A100 before A10).
GPU_PEAK_TFLOPS = [
    (('B200',), {'bf16': 2250.0, 'tf32': 1100.0}),
    (('H200',), {'bf16': 989.4, 'tf32': 494.7}),
    (('H100', 'PCIe'), {'bf16': 756.0, 'tf32': 378.0}),
    (('H100', 'NVL'), {'bf16': 835.0, 'tf32': 417.5}),
    (('H100',), {'bf16': 989.4, 'tf32': 494.7}),  # SXM
    (('A100',), {'bf16': 312.0, 'tf32': 156.0}),
    (('L40S',), {'bf16': 362.05, 'tf32': 183.0}),
    (('L4',), {'bf16': 121.0, 'tf32': 60.0}),
    (('A10G',), {'bf16': 125.0, 'tf32': 62.5}),
    (('A10',), {'bf16': 125.0, 'tf32': 62.5}),
    (('RTX 4090',), {'bf16': 165.2, 'tf32': 82.6}),
    (('RTX 3090',), {'bf16': 71.0, 'tf32': 35.6}),
    (('RTX 3060',), {'bf16': 25.6, 'tf32': 12.8}),
    (('V100',), {'bf16': 125.0, 'tf32': 15.7}),  # no bf16 or TF32 units: fp16 tensor cores, plain fp32
]


def gpu_peak_tflops(device_name, dtype):
    """Dense peak TFLOP/s of a GPU by its name for 'float32'/'bfloat16'/'float16', or None if not in the table."""
    for fragments, peaks in GPU_PEAK_TFLOPS:
        if all(f.lower() in device_name.lower() for f in fragments):
            return peaks['tf32'] if dtype == 'float32' else peaks['bf16']
    return None


_measured = {}


def measure_cpu_peak_tflops(dtype, size=2048, repeats=3):
    """Best of a few size x size matmuls in dtype on this CPU, in TFLOP/s (measured once per process)."""
    if dtype not in _measured:
        a = torch.randn(size, size).to(getattr(torch, dtype))
        b = torch.randn(size, size).to(getattr(torch, dtype))
        a @ b  # warm-up: thread pool, packing buffers
        best = float('inf')
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        _measured[dtype] = 2 * size ** 3 / best / 1e12
    return _measured[dtype]


def peak_tflops(device_type, device_name, dtype, override=None):
    """(peak TFLOP/s or None, where it came from). override is the peak_tflops setting and always wins."""
    if override:
        return float(override), 'peak_tflops setting'
    if device_type == 'cpu':
        return measure_cpu_peak_tflops(dtype), f'measured {dtype} matmul'
    if device_type == 'cuda':
        peak = gpu_peak_tflops(device_name, dtype)
        return (peak, 'datasheet') if peak else (None, f'unknown GPU {device_name!r}: set peak_tflops for MFU')
    return None, f'no peak known for {device_type}: set peak_tflops for MFU'


def mfu(flops_per_token, tokens_per_sec, peak, world_size=1):
    """Model FLOPs utilization per device: the model's FLOP/s over the devices' peak, or None without a peak."""
    if not peak:
        return None
    return flops_per_token * tokens_per_sec / world_size / (peak * 1e12)

"""
Should Muon orthogonalize the fused QKV matrix as one block or Q, K and V apart (as modded-nanogpt does)?

    python bench/muon_qkv.py --seeds 3 --max_iters 600

Trains config/train_shakespeare_char_cpu.py with optimizer=muon both ways over the same seeds and prints the final
val losses and the difference paired by seed. The split variant patches torch's Newton-Schulz step for the
(3*n_embd, n_embd) QKV shape only (no other matrix of the gpt2 preset has it) and rescales each block so that
Muon's match_rms_adamw learning-rate adjustment is that of a (n_embd, n_embd) matrix, as separate Q, K and V
parameters would get. Both variants run torch's Newton-Schulz iteration in float32 instead of bfloat16: on a CPU
without bf16 matrix units torch's bf16 version costs ~2 s per iteration of this model (vs ~35 ms for AdamW).
Needs data/shakespeare_char prepared.
"""
import argparse
import json
import math
import os
import runpy
import statistics
import sys
import tempfile

import torch
import torch.optim._muon as muon_impl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import runlog  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument('--seeds', type=int, default=3)
parser.add_argument('--max_iters', type=int, default=600)
parser.add_argument('--learning_rate', type=float, default=1e-3)
args = parser.parse_args()

N_EMBD = 128  # the config's width


def fused_newton_schulz(grad, ns_coefficients, ns_steps, eps):
    """torch.optim._muon._zeropower_via_newtonschulz, in float32."""
    a, b, c = ns_coefficients
    x = grad.float()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


def split_newton_schulz(update, *rest):
    if tuple(update.shape) != (3 * N_EMBD, N_EMBD):
        return fused_newton_schulz(update, *rest)
    # each block orthogonalized alone; x sqrt(1/3) turns the fused shape's lr adjustment (sqrt(3D)) into a DxD one's
    blocks = [fused_newton_schulz(b, *rest) for b in update.split(N_EMBD, dim=0)]
    return torch.cat(blocks, dim=0) * math.sqrt(1 / 3)


def final_val_loss(variant, seed, out_dir):
    muon_impl._zeropower_via_newtonschulz = split_newton_schulz if variant == 'split' else fused_newton_schulz
    sys.argv = ['train.py', os.path.join(ROOT, 'config/train_shakespeare_char_cpu.py'), '--optimizer=muon',
                f'--learning_rate={args.learning_rate}', f'--min_lr={args.learning_rate / 10}',
                f'--max_iters={args.max_iters}', f'--lr_decay_iters={args.max_iters}',
                f'--eval_interval={args.max_iters}', '--eval_iters=100', '--log_interval=100',
                '--save_checkpoints=False', f'--seed={seed}', f'--out_dir={out_dir}', '--overwrite=True']
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        runpy.run_path(os.path.join(ROOT, 'train.py'), run_name='__main__')
    except SystemExit as e:
        assert not e.code, f"{variant} seed {seed} exited with {e.code}"
    finally:
        os.chdir(cwd)
    [log] = runlog.load_all(out_dir)
    return log['eval_steps'][-1]['val_loss']


results = {'fused': [], 'split': []}
with tempfile.TemporaryDirectory() as tmp:
    for seed in range(1, args.seeds + 1):
        for variant in results:
            results[variant].append(final_val_loss(variant, seed, os.path.join(tmp, f'{variant}_{seed}')))
diffs = [s - f for s, f in zip(results['split'], results['fused'])]
summary = {'config': 'config/train_shakespeare_char_cpu.py', 'optimizer': 'muon', 'max_iters': args.max_iters,
           'learning_rate': args.learning_rate, 'torch': torch.__version__, **results, 'split_minus_fused': diffs,
           'mean_difference': statistics.mean(diffs),
           'std_difference': statistics.stdev(diffs) if len(diffs) > 1 else None}
print(json.dumps(summary, indent=1))

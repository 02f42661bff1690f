"""
Training throughput on synthetic data, measured by train.py's own loop (nothing re-implemented here).

    python bench/bench.py gpt2 llama moe --n_layer=4 --n_embd=256 --block_size=256 --batch_size=8
    python bench/bench.py config/full_gpt2_124m.py --compile=both --dtype=bfloat16 --iters=50

Each positional argument is a preset name or a config file: one row each (two with --compile=both).
Other --key=value settings go to train.py. Prints a table of median ms/iter, tokens/s, MFU, achieved
TFLOP/s and peak memory, and writes it with the device, torch version and git commit to bench/results/.

    python bench/bench.py config/train_shakespeare_char_cpu.py --vocab_size=65 --iters=200 --against=/tmp/old --rounds=3

--against=DIR runs DIR's train.py too (another checkout, e.g. `git worktree add /tmp/old <commit>`), alternating
with this one --rounds times, and prints the ratio of the medians: speeds compared side by side in one run, so
a machine whose speed drifts over minutes slows both alike.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import files  # noqa: E402
import monitor  # noqa: E402
from errors import die  # noqa: E402
from model import PRESETS  # noqa: E402

USAGE = "usage: python bench/bench.py PRESET_OR_CONFIG ... [--iters=N] [--compile=True|False|both] [--key=value ...]"


def synthetic_data(directory, vocab_size=50257, tokens=2_000_000):
    """Random GPT-2-vocabulary tokens in the format prepare.py writes."""
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        rng.integers(0, vocab_size, tokens, dtype=np.uint16).tofile(os.path.join(directory, f'{split}.bin'))
    meta = {'tokenizer': {'type': 'tiktoken', 'name': 'gpt2'}, 'vocab_size': vocab_size, 'dtype': 'uint16',
            'train_tokens': tokens, 'val_tokens': tokens, 'train_bytes': 4 * tokens, 'val_bytes': 4 * tokens,
            'source': 'synthetic', 'source_sha256': ''}
    with open(os.path.join(directory, 'meta.json'), 'w') as f:
        json.dump(meta, f)


def train_command(target, compile_flag, iters, overrides, data_dir, out_dir, tree=ROOT):
    """train.py's command line for one measured run; later overrides win over the defaults here."""
    spec = [os.path.abspath(target)] if target.endswith('.py') else [f'--arch_preset={target}']
    return [sys.executable, os.path.join(tree, 'train.py'), *spec, f'--data_dir={data_dir}', f'--out_dir={out_dir}',
            f'--max_iters={iters}', '--eval_iters=0', '--save_checkpoints=False', '--log_interval=1',
            '--warmup_iters=0', '--overwrite=True', f'--compile={compile_flag}', *overrides]


def run_one(target, compile_flag, iters, overrides, workdir, timeout=None, tree=ROOT):
    out_dir = os.path.join(workdir, f'run_{len(os.listdir(workdir))}')
    cmd = train_command(target, compile_flag, iters, overrides, f'{workdir}/data', out_dir, tree)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'target': target, 'compile': compile_flag, 'error': f'no result within {timeout} s'}
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        message = lines[-1].removeprefix('error: ') if lines else f'exit status {result.returncode}'
        return {'target': target, 'compile': compile_flag, 'error': message}
    [log_name] = [n for n in os.listdir(out_dir) if n.startswith('run_') and n.endswith('.json')]
    with open(os.path.join(out_dir, log_name)) as f:
        return row(target, compile_flag, json.load(f), tree)


def row(target, compile_flag, log, tree=ROOT):
    """One table row from a finished run's log (runlog.py's .json)."""
    info, summary = log['startup_info'], log['summary']
    hw, speed = info['hardware'], info['performance']
    return {
        'target': target, 'compile': compile_flag, 'tree': tree, 'architecture': info['architecture'],
        'parameters': info['parameters']['total'], 'dtype': hw['dtype'], 'device': hw['device_name'],
        'attention_kernel': hw['attention_kernel'], 'tokens_per_iter': info['training']['tokens_per_iter'],
        'flops_per_token': speed['flops_per_token'], 'peak_tflops': speed['peak_tflops'],
        'warmup_s': info['warmup_s'],
        # every iteration after the first (the warm-up), whatever the log interval
        'timed_iters': log['training_iterations'][-1]['iter'] - 1,
        'ms_per_iter': summary['median_time_ms'], 'tokens_per_sec': summary['median_tokens_per_sec'],
        'mfu': summary['median_mfu'],
        'achieved_tflops': speed['flops_per_token'] * summary['median_tokens_per_sec'] / 1e12
        if summary['median_tokens_per_sec'] else None,
        'peak_memory_mb': max(e['memory_peak_mb'] for e in log['training_iterations']),
    }


def table(rows):
    head = f"{'target':<28} {'compile':<7} {'dtype':<8} {'params':>9} {'ms/iter':>9} {'tok/s':>10} {'MFU':>6} " \
           f"{'TFLOP/s':>8} {'mem MiB':>8} {'warm-up s':>9}"
    lines = [head, '-' * len(head)]
    for r in rows:
        if 'error' in r:
            lines.append(f"{r['target']:<28} {str(r['compile']):<7} error: {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r['mfu'] is not None else '-'
        lines.append(f"{r['target']:<28} {str(r['compile']):<7} {r['dtype']:<8} {r['parameters'] / 1e6:>8.2f}M "
                     f"{r['ms_per_iter']:>9.1f} {r['tokens_per_sec']:>10,.0f} {mfu:>6} {r['achieved_tflops']:>8.3f} "
                     f"{r['peak_memory_mb']:>8.0f} {r['warmup_s']:>9.2f}")
    return '\n'.join(lines)


def main(argv):
    targets = [a for a in argv if not a.startswith('--')]
    options = dict(a[2:].split('=', 1) for a in argv if a.startswith('--') and '=' in a[2:])
    if not targets or any(a.startswith('--') and '=' not in a for a in argv):
        die(USAGE)
    for t in targets:
        if not t.endswith('.py') and t not in PRESETS:
            die(f"{t!r} is neither a config file nor a preset ({', '.join(PRESETS)})")
        if t.endswith('.py') and not os.path.isfile(t):
            die(f"config file not found: {t}")
    iters = int(options.pop('iters', 20))
    if iters < 2:
        die("--iters must be at least 2 (the first step is warm-up)")
    compile_choice = options.pop('compile', 'False')
    compiles = {'both': [False, True], 'True': [True], 'False': [False]}.get(compile_choice)
    if compiles is None:
        die(f"--compile={compile_choice}: expected True, False or both")
    results_dir = options.pop('results_dir', os.path.join(ROOT, 'bench', 'results'))
    against = options.pop('against', None)
    if against is not None and not os.path.isfile(os.path.join(against, 'train.py')):
        die(f"--against={against}: no train.py there (a checkout of another commit)")
    rounds = options.pop('rounds', '1')
    if not rounds.isdigit() or int(rounds) < 1:
        die(f"--rounds={rounds}: expected a whole number of at least 1")
    rounds = int(rounds)
    trees = [ROOT] + ([os.path.abspath(against)] if against else [])
    overrides = [f'--{k}={v}' for k, v in options.items()]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        os.makedirs(os.path.join(workdir, 'data'))
        synthetic_data(os.path.join(workdir, 'data'), int(options.get('vocab_size', 50257)))
        for target in targets:
            for compile_flag in compiles:
                for round_number in range(rounds):
                    for tree in trees if round_number % 2 == 0 else trees[::-1]:  # ABBA: order bias cancels
                        rows.append(run_one(target, compile_flag, iters, overrides, workdir, tree=tree))
                        print(table(rows[-1:]).splitlines()[-1] + (f"  ({tree})" if against else ''), flush=True)
    print()
    print(table(rows))
    ratios = []
    for target in targets if against else []:
        for compile_flag in compiles:
            ms = [[r['ms_per_iter'] for r in rows if r['target'] == target and r['compile'] == compile_flag
                   and r.get('tree') == tree] for tree in trees]
            if all(ms):
                ratios.append({'target': target, 'compile': compile_flag,
                               'this_over_against': float(np.median(ms[0]) / np.median(ms[1]))})
                print(f"{target} compile={compile_flag}: this checkout's median ms/iter / {against}'s = "
                      f"{ratios[-1]['this_over_against']:.3f} ({rounds} rounds each, alternating)")
    import torch
    repro = monitor.reproducibility_info('cuda' if torch.cuda.is_available() else 'cpu')
    commit = repro['git_commit'] and repro['git_commit'] + ('-dirty' if repro['git_dirty'] else '')
    record = {'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'git_commit': commit, 'torch': torch.__version__,
              'python': platform.python_version(), 'machine': platform.machine(), 'cpu_count': os.cpu_count(),
              'cuda_device': torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              'iters': iters, 'overrides': overrides, 'rows': rows,
              **({'against': os.path.abspath(against), 'ratios': ratios} if against else {})}
    os.makedirs(results_dir, exist_ok=True)
    device = (record['cuda_device'] or 'cpu').replace(' ', '_')
    path = os.path.join(results_dir, f"bench_{time.strftime('%Y%m%d_%H%M%S')}_{device}.json")
    files.write_json(path, record)
    print(f"\nwrote {path}")
    return 0 if all('error' not in r for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

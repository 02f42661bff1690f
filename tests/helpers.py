import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
sys.path.insert(0, os.path.join(ROOT, 'data'))
from common import char_tokenizer, write_dataset  # noqa: E402

# a tiny llama-style model that runs a few dozen iterations in about a second
TINY_MODEL = ['--arch_preset=llama', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16',
              '--batch_size=4', '--device=cpu', '--dtype=float32', '--eval_iters=2']


def make_char_dataset(directory, text=None, seed=0):
    import random
    rng = random.Random(seed)
    text = text or ''.join(rng.choice('abcdefghij \n') for _ in range(3000))
    n = int(0.9 * len(text))
    write_dataset(str(directory), char_tokenizer(text), text[:n], text[n:], text, 'synthetic')
    return str(directory)


def run(script, *args, cwd=ROOT, timeout=300):
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true'}
    if os.path.isdir(os.path.join(SHARED, 'tiktoken_cache')):
        env.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(SHARED, 'tiktoken_cache'))
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def train(data_dir, out_dir, *args, check=True):
    result = run('train.py', f'--data_dir={data_dir}', f'--out_dir={out_dir}', *TINY_MODEL, *args)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def run_logs(out_dir):
    names = sorted(n for n in os.listdir(out_dir) if n.startswith('run_') and n.endswith('.json'))
    logs = []
    for name in names:
        with open(os.path.join(out_dir, name)) as f:
            logs.append(json.load(f))
    return sorted(logs, key=lambda log: log['start_time'])


def iteration_losses(out_dir):
    return {e['iter']: e['loss'] for log in run_logs(out_dir) for e in log['training_iterations']}

import contextlib
import io
import json
import os
import runpy
import signal
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


def make_sharded_dataset(directory, n_documents=300, seed=0):
    """A corpus of jsonl documents prepared by the corpus engine: char tokens, several shards, epoch sampling."""
    import random
    import corpus
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    source = os.path.join(directory, 'docs.jsonl')
    with open(source, 'w') as f:
        for _ in range(n_documents):
            f.write(json.dumps({'text': ''.join(rng.choice('abcdefghij \n') for _ in range(rng.randint(5, 40)))}) + '\n')
    corpus.prepare([source], str(directory), 'char', val_fraction=0.1, num_proc=1, unit_mb=0.002, shard_tokens=2000)
    return str(directory)


def run(script, *args, cwd=ROOT, timeout=300, in_process=True):
    """Run a project script as `python script args...` and return a CompletedProcess.

    In-process by default (runpy, argv patched, output captured): it skips the 2-second torch import of a fresh
    interpreter. The scripts report every error through sys.exit, so the exit status is the same either way;
    in_process=False spawns a real interpreter where that difference matters (signals, tracebacks on stderr)."""
    args = [str(a) for a in args]
    path = os.path.join(ROOT, script)
    if not in_process:
        env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true'}
        return subprocess.run([sys.executable, path, *args], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, env=env)
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, os.getcwd(), signal.getsignal(signal.SIGINT), os.environ.get('WANDB_MODE')
    sys.argv = [path, *args]
    os.environ.setdefault('WANDB_MODE', 'offline')
    os.chdir(cwd)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(path, run_name='__main__')
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        signal.signal(signal.SIGINT, saved[2])
        if saved[3] is None:
            os.environ.pop('WANDB_MODE', None)
    return subprocess.CompletedProcess([path, *args], code, out.getvalue(), err.getvalue())


def train(data_dir, out_dir, *args, check=True, in_process=True):
    result = run('train.py', f'--data_dir={data_dir}', f'--out_dir={out_dir}', *TINY_MODEL, *args,
                 in_process=in_process)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def run_logs(out_dir):
    import runlog
    return runlog.load_all(str(out_dir))


def iteration_losses(out_dir):
    return {e['iter']: e['loss'] for log in run_logs(out_dir) for e in log['training_iterations']}


def assert_optimizer_follows(groups, learning_rate, lr, weight_decay, betas):
    """The optimizer's param groups (as a checkpoint saved them) carry this run's settings, not a resumed one's."""
    assert groups
    for group in groups:
        assert group['base_lr'] == learning_rate and abs(group['lr'] - lr) < 1e-12, group
        assert group['weight_decay'] in (weight_decay, 0.0), group
        if 'betas' in group:  # AdamW's; Muon has a momentum instead
            assert tuple(group['betas']) == betas, group
    assert any(g['weight_decay'] == weight_decay for g in groups)


# train.py runs one after another in the same two workers (runpy, as helpers.run runs it in one process): one
# start of torchrun and its workers (three interpreters importing torch) for a family of runs, not one per run.
# Each run joins a process group of its own and closes it (process_group.init, train.py's finish); the first run
# that fails stops the launch, so no rank starts the next run while another still waits in the failed one.
EACH = r"""import json, os, runpy, sys
sys.path.insert(0, {root!r})
with open(sys.argv[1]) as f:
    plan = json.load(f)
for script, argv in plan:
    sys.argv = [os.path.join({root!r}, script), *argv]
    try:
        runpy.run_path(sys.argv[0], run_name='__main__')
    except SystemExit as e:
        if e.code not in (None, 0):
            print(f"torchrun_each: exit status {{e.code}} from {{script}} {{' '.join(argv)}}", file=sys.stderr,
                  flush=True)
            raise
"""


def train_run(data_dir, out_dir, *args):
    """A torchrun_each entry: train.py with the tiny model."""
    return 'train.py', [f'--data_dir={data_dir}', f'--out_dir={out_dir}', *TINY_MODEL, *map(str, args)]


def torchrun_each(folder, plan):
    """plan: [(script, [args...]), ...]: scripts of ROOT (train.py, eval.py) run one after another under 2 ranks,
    all in one torchrun launch."""
    script, plan_file = folder / 'torchrun_each.py', folder / 'torchrun_each.json'
    script.write_text(EACH.format(root=ROOT))
    plan_file.write_text(json.dumps([[name, [str(a) for a in args]] for name, args in plan]))
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                             str(script), str(plan_file)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result

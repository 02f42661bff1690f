"""
Golden runs: proof that a change to train.py (or what it calls) moves no number.

    python bench/golden.py record bench/results/golden_<commit>.json   # before the change
    python bench/golden.py check bench/results/golden_<commit>.json    # after: record again, compare, exit 1 if any differs
    python bench/golden.py compare A.json B.json
    --tree DIR runs DIR's train.py (e.g. a `git worktree add /tmp/old <commit>`), so two commits can be run side by side.

Each scenario trains a tiny model on CPU in float32 (one process, 2-rank DDP, ZeRO-1 and FSDP under torchrun, a resume,
MoE, Muon with dropout, downstream tasks, eval_only, and the error and stop paths) and records its exit status, the
run log's entries without their timings, the JSON schema of every event, the console lines with their timings masked,
and a SHA-256 of every tensor of every checkpoint. Bit-identical is the bar: floats compare with ==.
"""
import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# fields that measure the clock or the machine, not the computation
TIMING = {'time_ms', 'tokens_per_sec', 'mfu', 'achieved_tflops', 'eta_s', 'time_s', 'total_time_s', 'warmup_s',
          'memory_allocated_mb', 'memory_peak_mb', 'memory_reserved_mb', 'warmup', 'start_time', 'command', 'git',
          'peak_tflops', 'peak_source', 'tokens_per_sec_at_50_mfu', 'device_memory_gb', 'run_name', 'dir', 'path',
          'out_dir', 'data_dir', 'eval_tasks_dir', 'versions', 'python', 'platform', 'hostname', 'git_commit',
          'git_dirty'}
# config fields added since a record was made: a newer record holding one at this default still compares identical
ADDED_FIELDS = {'attention_mask': 'causal', 'eval_at_start': True}
TINY = ['--arch_preset=llama', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4',
        '--device=cpu', '--dtype=float32', '--eval_iters=2', '--log_interval=2', '--grad_stats_interval=4',
        '--peak_tflops=1']
ITEMS = {'piqa': [{'goal': 'Open a jar', 'sol1': 'twist the lid', 'sol2': 'hit it', 'label': 1}] * 4,
         'lambada': [{'text': 'the cat sat on the mat and then the cat sat on the mat'}] * 4}


def scenarios(data, evals):
    """(name, launcher, args, out_dir name) in order; a later one may use an earlier one's out_dir."""
    base = [f'--data_dir={data}', *TINY]
    return [
        ('single', 1, [*base, '--max_iters=12', '--eval_interval=6', '--gradient_accumulation_steps=2'], 'single'),
        ('eval_only', 1, [*base, '--eval_only=True'], 'single'),
        ('resume_part', 1, [*base, '--max_iters=6', '--eval_interval=3', '--learning_rate=1e-3'], 'resume'),
        ('resume', 1, [*base, '--max_iters=12', '--eval_interval=3', '--init_from=resume', '--learning_rate=2e-3'],
         'resume'),
        ('moe', 1, [*base, '--max_iters=8', '--eval_interval=4', '--n_expert=4', '--n_expert_per_token=2'], 'moe'),
        ('muon_dropout_gpt2', 1, [*base, '--arch_preset=gpt2', '--optimizer=muon', '--dropout=0.1',
                                  '--lr_schedule=wsd', '--warmup_iters=2', '--max_iters=8', '--eval_interval=4'],
         'muon'),
        ('tasks', 1, [*base, '--block_size=32', '--max_iters=4', '--eval_interval=2', '--eval_tasks=piqa,lambada',
                      f'--eval_tasks_dir={evals}', '--eval_tasks_limit=3'], 'tasks'),
        ('target_val_loss', 1, [*base, '--max_iters=20', '--eval_interval=2', '--target_val_loss=3.0'], 'target'),
        ('max_time', 1, [*base, '--max_iters=1000', '--max_time=0', '--eval_interval=500'], 'max_time'),
        ('err_schedule', 1, [*base, '--lr_schedule=step'], 'err'),
        ('err_out_dir_taken', 1, [*base, '--max_iters=2'], 'single'),
        ('err_non_finite', 1, [*base, '--max_iters=6', '--learning_rate=1e30', '--grad_clip=0'], 'nan'),
        ('ddp', 2, [*base, '--max_iters=8', '--eval_interval=4', '--gradient_accumulation_steps=2'], 'ddp'),
        ('zero1', 2, [*base, '--max_iters=8', '--eval_interval=4', '--gradient_accumulation_steps=2',
                      '--parallelism=zero1'], 'zero1'),
        ('fsdp', 2, [*base, '--max_iters=8', '--eval_interval=4', '--gradient_accumulation_steps=2',
                     '--parallelism=fsdp'], 'fsdp'),
        ('fsdp_resume', 2, [*base, '--max_iters=12', '--eval_interval=4', '--gradient_accumulation_steps=2',
                            '--parallelism=fsdp', '--init_from=resume'], 'fsdp'),
    ]


def added_default(key, value):
    """A field of ADDED_FIELDS at its default: as a config key, or as a checkpoint digest's 'model_args.<field>.'."""
    name = key.rstrip('.').rsplit('.', 1)[-1]
    return name in ADDED_FIELDS and value in (ADDED_FIELDS[name], repr(ADDED_FIELDS[name]))


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in TIMING and k.replace('median_', '') not in TIMING
                and not added_default(k, v)}
    if isinstance(value, list):
        return [strip(v) for v in value if not (isinstance(v, str) and v.rsplit('.', 1)[-1] in ADDED_FIELDS)]
    return value


def schema(value, prefix=''):
    """The key paths of a JSON document (list items merged): what a reader of the log relies on."""
    if isinstance(value, dict):
        return sorted({p for k, v in value.items() for p in [prefix + k, *schema(v, prefix + k + '.')]})
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return sorted({p for v in value for p in schema(v, prefix + '[].')})
    return []


MASK = re.compile(r'[\d.,]+ ?(ms/iter|tok/s|ms|s\b|MiB|%|GB)|ETA [^,\n]*|MFU [\d.]+%|about [\w ,]+|\d+ s per')


def console(text):
    return [MASK.sub('#', line) for line in text.splitlines() if line.strip()]


def tensor_digests(obj, prefix=''):
    import torch
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        return {prefix: f"{t.dtype}{list(t.shape)}:{hashlib.sha256(t.view(-1).view(torch.uint8).numpy()).hexdigest()[:24]}"}
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(tensor_digests(v, f'{prefix}{k}.'))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(tensor_digests(v, f'{prefix}{i}.'))
    elif prefix:
        out[prefix] = repr(obj)
    return out


def checkpoints(out_dir):
    import torch
    found = {}
    for path in sorted(glob.glob(os.path.join(out_dir, '*.pt'))):
        state = torch.load(path, map_location='cpu', weights_only=True)
        state.pop('config', None)  # holds paths; its values are in the run log's config
        found[os.path.basename(path)] = tensor_digests(state)
    return found


def run_log(out_dir):
    """The newest run's events, from its .json (finished) or .jsonl (stopped by an error)."""
    logs = sorted(glob.glob(os.path.join(out_dir, 'run_*.json*')), key=os.path.getmtime)
    if not logs:
        return None
    path = logs[-1]
    if path.endswith('.jsonl'):
        with open(path) as f:
            return {'jsonl': [json.loads(line) for line in f if line.strip()]}
    with open(path) as f:
        return json.load(f)


def record(tree, path):
    import torch
    sys.path.insert(0, os.path.join(ROOT, 'data'))
    from common import char_tokenizer, write_dataset
    work = tempfile.mkdtemp(prefix='golden_')
    try:
        import string
        # every character the tasks' prompts can hold, then mostly a small alphabet the model learns fast
        text = (string.ascii_letters + string.digits + string.punctuation + ' \n') * 20 + 'abcdefghij \n' * 1000
        data = os.path.join(work, 'data')
        n = int(0.9 * len(text))
        write_dataset(data, char_tokenizer(text), text[:n], text[n:], text, 'golden')
        evals = os.path.join(work, 'evals')
        os.makedirs(evals)
        for task, items in ITEMS.items():
            with open(os.path.join(evals, f'{task}.jsonl'), 'w') as f:
                f.writelines(json.dumps(i) + '\n' for i in items)
        env = {**os.environ, 'OMP_NUM_THREADS': '1', 'WANDB_MODE': 'disabled', 'PYTHONHASHSEED': '0'}
        results = {'torch': torch.__version__, 'tree': os.path.abspath(tree), 'runs': {}}
        for name, ranks, args, out in scenarios(data, evals):
            out_dir = os.path.join(work, out)
            launcher = [sys.executable] if ranks == 1 else [
                sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={ranks}']
            r = subprocess.run([*launcher, os.path.join(tree, 'train.py'), *args, f'--out_dir={out_dir}'], cwd=tree,
                               capture_output=True, text=True, env=env, timeout=600)
            log = run_log(out_dir)
            results['runs'][name] = {
                'returncode': r.returncode,
                'errors': [line.replace(work, '<work>') for line in r.stderr.splitlines() if line.startswith('error: ')],
                'console': console(r.stdout.replace(work, '<work>')),
                'log': strip(log), 'schema': schema(log),
                'checkpoints': checkpoints(out_dir) if os.path.isdir(out_dir) else {},
            }
            print(f"{name}: exit {r.returncode}, {len(results['runs'][name]['checkpoints'])} checkpoints", flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(results, f, indent=1, sort_keys=True)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def differences(a, b, where=''):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                yield f"{where}{k}: only in {'the first' if k in a else 'the second'}"
            else:
                yield from differences(a[k], b[k], f'{where}{k}.')
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f'{where}{i}.')
    elif (a != b and not (a != a and b != b)) or type(a) is not type(b):  # nan equals nan here
        yield f"{where[:-1]}: {str(a)[:120]!s} != {str(b)[:120]!s}"


def compare(a, b, allowed_console=()):
    """Every difference of numbers, schema, exit status and checkpoints; console lines apart from allowed patterns."""
    if a['torch'] != b['torch']:
        print(f"note: recorded with torch {a['torch']} and {b['torch']}: bit-identity is expected of one version")
    found = []
    for name in sorted(set(a['runs']) | set(b['runs'])):
        if name not in a['runs'] or name not in b['runs']:
            found.append(f"{name}: only in one record")
            continue
        x, y = a['runs'][name], b['runs'][name]
        for key in ('returncode', 'errors', 'log', 'schema', 'checkpoints'):  # strip: a record made before a field
            found += [f"{name}.{key}.{d}" for d in differences(strip(x[key]), strip(y[key]))]  # joined TIMING
        lines_x = [line for line in x['console'] if not any(re.search(p, line) for p in allowed_console)]
        lines_y = [line for line in y['console'] if not any(re.search(p, line) for p in allowed_console)]
        if lines_x != lines_y:
            import difflib
            diff = list(difflib.unified_diff(lines_x, lines_y, lineterm='', n=0))[2:]
            found += [f"{name}.console: {line}" for line in diff]
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('action', choices=['record', 'check', 'compare'])
    parser.add_argument('files', nargs='+')
    parser.add_argument('--tree', default=ROOT, help="the checkout whose train.py runs (default: this one)")
    parser.add_argument('--allow_console', action='append', default=[],
                        help="a regex of console lines an intended wording change may add, drop or alter")
    args = parser.parse_args()
    if args.action == 'record':
        record(args.tree, args.files[0])
        return
    with open(args.files[0]) as f:
        old = json.load(f)
    if args.action == 'check':
        new = record(args.tree, args.files[1] if len(args.files) > 1 else os.path.join(tempfile.gettempdir(),
                                                                                        'golden_now.json'))
    else:
        with open(args.files[1]) as f:
            new = json.load(f)
    found = compare(old, new, args.allow_console)
    for line in found:
        print(line)
    print(f"{len(old['runs'])} runs compared: " + ('identical' if not found else f"{len(found)} differences"))
    sys.exit(1 if found else 0)


if __name__ == '__main__':
    main()

"""
Every GPU figure the project claims, from one command:

    python bench/gpu.py                  # on a CUDA machine: about 8 minutes on one H100
    python bench/gpu.py --tiny           # a tiny version of every step: what runs without CUDA (and in the tests)

Steps (a failing step is recorded and the others go on; exit status 1 if any failed):
  flash        flash_attention='require' accepted for GPT-2 124M in bf16, i.e. FlashAttention really runs
  throughput   eager and compiled tokens/s, MFU and peak memory of full_gpt2_124m, full_llama_124m and
               full_moe_200m in bf16 on synthetic tokens (bench/bench.py's measurement, train.py's own loop)
  fsdp         FSDP under torchrun (NCCL on a GPU, gloo on a CPU), one process: losses equal a plain process
  fsdp_1.36b   config/full_llama_1.36b.py starts under FSDP, built on the meta device: time to the first step,
               peak host memory, peak GPU memory
  shakespeare  config/train_shakespeare_char.py, compiled: wall time to val loss <= 1.47
Writes bench/results/gpu_<stamp>_<device>.json and .md: device, torch version, commit, each figure beside its
target.

--steps a,b          only these steps
--models a.py,b.py   the throughput step's configs (default: the three above)
--shakespeare PATH   Tiny Shakespeare text (default: data/shakespeare_char as prepared, else its prepare.py)
--results_dir DIR    where the files go (default bench/results)
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

ROOT = bench.ROOT
sys.path.insert(0, ROOT)
from errors import die  # noqa: E402
import monitor  # noqa: E402
import runlog  # noqa: E402

STEPS = ['flash', 'throughput', 'fsdp', 'fsdp_1.36b', 'shakespeare']
MODELS = [('config/full_gpt2_124m.py', 16), ('config/full_llama_124m.py', 16), ('config/full_moe_200m.py', 8)]
TINY_MODEL = ['--n_layer=2', '--n_head=4', '--n_embd=64', '--block_size=64']
TARGETS = {'gpt2_mfu': 0.50, 'shakespeare_val_loss': 1.47, 'shakespeare_s': 60.0}


def train(args, out_dir, timeout, ranks=0):
    """Run train.py (under torchrun with `ranks` processes if given): (exit status, last error line, run logs,
    peak RSS in MiB of the largest process)."""
    script = os.path.join(ROOT, 'train.py')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={ranks}', script] \
        if ranks else [sys.executable, script]
    cmd += [*args, f'--out_dir={out_dir}', '--overwrite=True']
    with tempfile.TemporaryFile('w+') as err:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.time() + timeout
        while True:  # reaped by wait4 itself: its usage covers the process and every process it waited for
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                process.kill()
                _, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.2)
        code = process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = [line for line in err.read().splitlines() if line.strip()]
    peak_rss = usage.ru_maxrss / 2 ** 10  # KiB on Linux
    why = next((line.removeprefix('error: ') for line in reversed(lines) if line.startswith('error: ')),
               lines[-1] if lines else f'exit status {code}')
    try:
        logs = runlog.load_all(out_dir)
    except (OSError, ValueError):
        logs = []
    return code, why, logs, peak_rss


def step_flash(ctx):
    model = TINY_MODEL if ctx['tiny'] else []
    code, why, logs, _ = train(['config/full_gpt2_124m.py', *model, f"--data_dir={ctx['data']}", '--max_iters=2',
                                '--batch_size=2', '--eval_iters=0', '--save_checkpoints=False', '--dtype=bfloat16',
                                "--flash_attention=require"], os.path.join(ctx['work'], 'flash'), ctx['timeout'])
    if code == 0:
        return {'status': 'ok', 'attention_kernel': logs[-1]['startup_info']['hardware']['attention_kernel']}
    # without CUDA, refusing is the right answer: the check itself worked
    return {'status': 'failed' if ctx['cuda'] else 'unavailable', 'reason': why}


def step_throughput(ctx):
    rows = []
    for config, batch in ctx['models']:
        overrides = ['--dtype=bfloat16', f'--batch_size={2 if ctx["tiny"] else batch}', '--gradient_accumulation_steps=1',
                     *(TINY_MODEL if ctx['tiny'] else [])]
        for compile_flag in (False, True):
            row = bench.run_one(config, compile_flag, 6 if ctx['tiny'] else 25, overrides, ctx['work'], ctx['timeout'])
            rows.append(row)
            print(bench.table([row]).splitlines()[-1], flush=True)
    gpt2 = next((r for r in rows if 'gpt2' in r['target'] and r['compile'] and 'error' not in r), None)
    return {'status': 'failed' if any('error' in r for r in rows) else 'ok', 'rows': rows,
            'gpt2_compiled_mfu': gpt2 and gpt2['mfu']}


def iteration_losses(logs):
    return {e['iter']: e['loss'] for log in logs for e in log['training_iterations']}


def step_fsdp(ctx):
    # fp32 on both sides: the same arithmetic, so the losses agree to rounding
    args = ['config/full_gpt2_124m.py', '--n_layer=4', '--block_size=256', *(TINY_MODEL if ctx['tiny'] else []),
            f"--data_dir={ctx['data']}", '--batch_size=4', '--max_iters=10', '--eval_iters=0', '--log_interval=1',
            '--save_checkpoints=False', '--dtype=float32', '--warmup_iters=2', '--lr_decay_iters=10']
    runs = {}
    for name, ranks, extra in (('plain', 0, []), ('fsdp', 1, ['--parallelism=fsdp'])):
        code, why, logs, _ = train(args + extra, os.path.join(ctx['work'], f'fsdp_{name}'), ctx['timeout'], ranks)
        if code != 0:
            return {'status': 'failed', 'reason': f'{name}: {why}'}
        runs[name] = iteration_losses(logs)
    if sorted(runs['plain']) != sorted(runs['fsdp']) or not runs['plain']:
        return {'status': 'failed', 'reason': f"logged iterations differ: {sorted(runs['plain'])} / {sorted(runs['fsdp'])}"}
    worst = max(abs(runs['plain'][i] - runs['fsdp'][i]) for i in runs['plain'])
    backend = logs[-1]['startup_info']['hardware'].get('device_name')
    return {'status': 'ok' if worst <= 1e-3 else 'failed', 'max_loss_difference': worst,
            'iterations': len(runs['plain']), 'device': backend,
            **({} if worst <= 1e-3 else {'reason': f'losses differ by up to {worst:.2e}'})}


def step_fsdp_big(ctx):
    model = ['--n_layer=2', '--n_head=4', '--n_embd=64'] if ctx['tiny'] else []
    code, why, logs, peak_rss = train(
        ['config/full_llama_1.36b.py', *model, f"--data_dir={ctx['data']}", '--parallelism=fsdp', '--dtype=bfloat16',
         '--batch_size=1', '--block_size=64' if ctx['tiny'] else '--block_size=2048', '--max_iters=3',
         '--eval_iters=0', '--log_interval=1', '--save_checkpoints=False'],
        os.path.join(ctx['work'], 'fsdp_big'), ctx['timeout'], ranks=1)
    if code != 0:
        return {'status': 'failed', 'reason': why}
    info = logs[-1]['startup_info']
    parameters = info['parameters']['total']
    return {'status': 'ok', 'parameters': parameters, 'fp32_model_mib': 4 * parameters / 2 ** 20,
            'peak_host_mib': peak_rss, 'first_step_s': info.get('warmup_s'),
            'peak_device_mib': max(e['memory_peak_mb'] or 0 for e in logs[-1]['training_iterations'])}


def step_shakespeare(ctx):
    data_dir = os.path.join(ROOT, 'data', 'shakespeare_char')
    if ctx['shakespeare'] or not os.path.isfile(os.path.join(data_dir, 'meta.json')):
        data_dir = os.path.join(ctx['work'], 'shakespeare_char')
        prepare = [sys.executable, os.path.join(ROOT, 'data', 'shakespeare_char', 'prepare.py'), f'--out_dir={data_dir}']
        done = subprocess.run(prepare + ([f"--input={ctx['shakespeare']}"] if ctx['shakespeare'] else []),
                              capture_output=True, text=True)
        if done.returncode:
            return {'status': 'failed', 'reason': (done.stderr.strip().splitlines() or ['prepare failed'])[-1]}
    target = TARGETS['shakespeare_val_loss']
    if ctx['tiny']:
        limits = [*TINY_MODEL[:3], '--batch_size=4', '--max_iters=40', '--eval_interval=20', '--eval_iters=4',
                  '--compile=False', '--target_val_loss=3.5']
        target = 3.5
    else:
        limits = ['--compile=True', f'--target_val_loss={target}', '--max_time=240']
    code, why, logs, _ = train(['config/train_shakespeare_char.py', f'--data_dir={data_dir}', '--save_checkpoints=False',
                                '--log_interval=50', *limits], os.path.join(ctx['work'], 'shakespeare'), ctx['timeout'])
    if code != 0:
        return {'status': 'failed', 'reason': why}
    evals = [e for log in logs for e in log['eval_steps'] if 'val_loss' in e]
    reached = next((e for e in evals if e['val_loss'] <= target), None)
    return {'status': 'ok', 'target_val_loss': target, 'reached': reached is not None,
            'seconds_to_target': reached and reached['time_s'], 'iterations_to_target': reached and reached['iter'],
            'best_val_loss': min((e['val_loss'] for e in evals), default=None),
            'total_s': logs[-1]['summary'].get('total_time_s')}


def step_lines(name, s):
    """The table rows of one step."""
    if s['status'] != 'ok':
        return [f"| {name} | {s['status']}: {s.get('reason', '')} | |"]
    if name == 'flash':
        return [f"| flash | flash_attention='require' accepted; SDPA kernel {s['attention_kernel']} | flash |"]
    if name == 'throughput':
        lines = []
        for r in s['rows']:
            label = f"{os.path.basename(r['target'])[:-3]}, {'compiled' if r['compile'] else 'eager'}"
            if 'error' in r:
                lines.append(f"| {label} | error: {r['error']} | |")
                continue
            mfu = f"{r['mfu']:.1%}" if r['mfu'] is not None else '-'
            target = f">= {TARGETS['gpt2_mfu']:.0%} MFU" if 'gpt2' in r['target'] and r['compile'] else ''
            lines.append(f"| {label} | {r['tokens_per_sec']:,.0f} tokens/s, MFU {mfu}, {r['ms_per_iter']:.1f} ms/iter,"
                         f" peak {r['peak_memory_mb']:,.0f} MiB, batch {r['tokens_per_iter']:,} tokens | {target} |")
        return lines
    if name == 'fsdp':
        return [f"| fsdp | losses of {s['iterations']} iterations within {s['max_loss_difference']:.1e} of one "
                f"plain process | equal |"]
    if name == 'fsdp_1.36b':
        return [f"| fsdp_1.36b | {s['parameters'] / 1e9:.2f}B parameters ({s['fp32_model_mib']:,.0f} MiB in fp32): "
                f"peak host {s['peak_host_mib']:,.0f} MiB, peak device {s['peak_device_mib']:,.0f} MiB, first step "
                f"{s['first_step_s']:.1f} s | host < model |"]
    got = (f"val loss {s['target_val_loss']} at {s['seconds_to_target']:.1f} s (iteration {s['iterations_to_target']})"
           if s['reached'] else f"not reached; best val loss {s['best_val_loss']}")
    return [f"| shakespeare | {got} | <= {TARGETS['shakespeare_val_loss']} in < {TARGETS['shakespeare_s']:.0f} s |"]


def report(record):
    """The markdown table: one line per figure, with its target where the project states one."""
    lines = [f"# GPU figures: {record['device']}", '',
             f"torch {record['torch']}, commit {record['git_commit']}, {record['time']}"
             + (' (tiny version: shapes and paths only, the figures mean nothing)' if record['tiny'] else ''), '',
             '| step | result | target |', '|---|---|---|']
    for name in STEPS:
        if name in record['steps']:
            try:
                lines += step_lines(name, record['steps'][name])
            except (KeyError, TypeError, ValueError) as e:  # a figure missing: the .json still has the rest
                lines.append(f"| {name} | see the .json ({type(e).__name__}: {e}) | |")
    return '\n'.join(lines) + '\n'


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tiny', action='store_true', help='tiny models and few steps (automatic without CUDA)')
    parser.add_argument('--steps', default=','.join(STEPS), help=f"comma-separated, from {', '.join(STEPS)}")
    parser.add_argument('--models', default=','.join(m for m, _ in MODELS), help='configs for the throughput step')
    parser.add_argument('--shakespeare', default='', help='path to the Tiny Shakespeare text')
    parser.add_argument('--results_dir', default=os.path.join(ROOT, 'bench', 'results'))
    parser.add_argument('--timeout', type=int, default=0, help='seconds per training run (default 360; tiny 240)')
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(',') if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        die(f"unknown step {unknown[0]!r}; allowed: {', '.join(STEPS)}")
    batches = dict(MODELS)
    models = [(m, batches.get(m, 8)) for m in args.models.split(',') if m]
    missing = [m for m, _ in models if not os.path.isfile(os.path.join(ROOT, m))]
    if missing:
        die(f"--models: no config file {missing[0]}")
    if args.shakespeare and not os.path.isfile(args.shakespeare):
        die(f"--shakespeare {args.shakespeare}: no such file")
    import torch
    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda
    if not cuda:
        print("no CUDA device: running the tiny version of every step")
    repro = monitor.reproducibility_info('cuda' if cuda else 'cpu')
    record = {'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'tiny': tiny, 'torch': torch.__version__,
              'cuda': torch.version.cuda, 'python': platform.python_version(),
              'device': torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine()),
              'git_commit': repro['git_commit'] and repro['git_commit'] + ('-dirty' if repro['git_dirty'] else ''),
              'steps': {}}
    functions = {'flash': step_flash, 'throughput': step_throughput, 'fsdp': step_fsdp, 'fsdp_1.36b': step_fsdp_big,
                 'shakespeare': step_shakespeare}
    start = time.time()
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, 'data')
        os.makedirs(data)
        bench.synthetic_data(data)
        ctx = {'tiny': tiny, 'cuda': cuda, 'work': work, 'data': data, 'shakespeare': args.shakespeare, 'models': models,
               'timeout': args.timeout or (240 if tiny else 360)}
        for name in steps:
            print(f"== {name}", flush=True)
            t = time.time()
            try:
                result = functions[name](ctx)
            except Exception as e:  # one broken step must not cost the figures of the others
                result = {'status': 'failed', 'reason': f'{type(e).__name__}: {e}'}
            result['seconds'] = round(time.time() - t, 1)
            record['steps'][name] = result
            print(f"   {result['status']} in {result['seconds']} s" +
                  (f": {result['reason']}" if result.get('reason') else ''), flush=True)
    record['total_s'] = round(time.time() - start, 1)
    os.makedirs(args.results_dir, exist_ok=True)
    base = os.path.join(args.results_dir, f"gpu_{time.strftime('%Y%m%d_%H%M%S')}_{record['device'].replace(' ', '_')}")
    with open(base + '.json', 'w') as f:
        json.dump(record, f, indent=1)
    with open(base + '.md', 'w') as f:
        f.write(report(record))
    print('\n' + report(record))
    print(f"wrote {base}.json and {base}.md ({record['total_s']:.0f} s in all)")
    return 1 if any(s['status'] == 'failed' for s in record['steps'].values()) else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

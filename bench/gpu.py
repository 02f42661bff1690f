"""
Every GPU figure the project claims, from one command, written out as each step ends so that a run cut short keeps
what it measured:

    python bench/gpu.py --results_dir $OUT --deadline 420 --commit <sha> --shakespeare <path>   # one GPU, ~7 min
    python bench/gpu.py --tiny --results_dir /tmp/gpu   # the rehearsal: every step at toy sizes (automatic on a CPU)

Steps, in this order (a failing step is recorded and the rest go on, exit status 1; a step that no longer fits
before --deadline is recorded as skipped, with the reason):
  preflight      in-process, ~15 s: nvidia-smi (GPU, driver, power limit, other processes), torch/CUDA/cuDNN/NCCL/
                 Triton versions, compute capability, gcc and Python.h (Triton compiles with them), bf16 matmul
                 TFLOP/s at 8192^3 and at GPT-2 124M's shapes, the MoE's grouped-matmul dispatch against the
                 per-expert loop (forward and backward, bf16), the SDPA kernel each flash_attention setting gets
  flash          train.py with flash_attention='require' for GPT-2 124M in bf16: FlashAttention really runs
  moe_eager      full_moe_200m eager, 15 iterations: the grouped matmul trains before it is compiled
  gpt2_compiled  full_gpt2_124m compiled, the headline MFU (TORCH_LOGS=recompiles,graph_breaks, kept in the .log)
  moe_compiled   full_moe_200m compiled
  fsdp           FSDP under torchrun on one GPU (NCCL) against a plain process, fp32: the same losses; and its
                 checkpoint of iteration 3 resumed: the same losses as straight through
  flex           training steps of GPT-2 124M with attention_mask='document' (FlexAttention on CUDA) against causal
                 SDPA, T=1024; first FlexAttention's loss, logits and gradients against SDPA's boolean mask on the
                 same weights and batch (failed beyond 1e-2 relative in bf16; the tiny version: forward only, fp32,
                 1e-4); skipped where this checkout has no FlexAttention path
  fsdp_1.36b     config/full_llama_1.36b.py under FSDP, built on the meta device: time to the first step, peak
                 host and GPU memory
  gpt2_eager     full_gpt2_124m eager
  llama          full_llama_124m eager and compiled
  shakespeare    config/train_shakespeare_char.py compiled: wall time to val loss 1.47; never downloads (needs
                 --shakespeare PATH or a prepared data/shakespeare_char)
Throughput runs train.py's own loop on synthetic tokens in bf16 (bench/bench.py's measurement) as training at
speed runs it: the vocabulary padded to 50304 as nanoGPT does, a log line (the one host sync) every 10 of --iters
iterations, no per-layer statistics.

Files in --results_dir, each named gpu_<stamp>_<device>, rewritten after every step: .json (the record; steps not
reached yet are listed as pending), .md (the table, each figure beside its target), .log (every run's command
line and console output, appended as it runs), _runs.jsonl (every run's train.py log).
"""
import argparse
import ctypes
import dataclasses
import json
import os
import platform
import re
import runpy
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time

STARTED = time.time()  # the start for --deadline: before torch's import, seconds of it

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

ROOT = bench.ROOT
sys.path.insert(0, ROOT)
import files  # noqa: E402
import monitor  # noqa: E402
import perf  # noqa: E402
import runlog  # noqa: E402
from errors import die  # noqa: E402

GPT2, LLAMA, MOE, BIG = ('config/full_gpt2_124m.py', 'config/full_llama_124m.py', 'config/full_moe_200m.py',
                         'config/full_llama_1.36b.py')
BATCH = {GPT2: 16, LLAMA: 16, MOE: 8}  # micro-batches of 1024 tokens
TINY = dict(n_layer=2, n_head=4, n_embd=64, block_size=64)
TINY_ARGS = [f'--{k}={v}' for k, v in TINY.items()]
VOCAB = {'data': 50257, 'model': 50304}  # GPT-2's vocabulary, padded to a multiple of 64 for the head's matmul
TINY_VOCAB = {'data': 500, 'model': 512}
MOE_EAGER_ITERS = 15
TARGETS = {'gpt2_mfu': 0.50, 'moe_mfu': 0.40, 'shakespeare_val_loss': 1.47, 'shakespeare_s': 60.0}
ANCHORS = 'nanoGPT ~33%, llm.c ~40%, nanochat 41-46%'
RESERVE_S = 5  # what a run leaves before --deadline, to kill it and write the files
COMPILE_LOGS = {'TORCH_LOGS': 'recompiles,graph_breaks'}


# ---------------------------------------------------------------- running train.py and other processes

def descendants(pid):
    """Every process below pid, from /proc: torchrun starts each worker in a session of its own, out of its group."""
    children = {}
    for entry in os.listdir('/proc') if os.path.isdir('/proc') else []:
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                parent = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill_tree(pid):
    """SIGKILL the run's process group and every process below it, with its group: nothing keeps the GPU."""
    for p in [pid, *descendants(pid)]:  # listed first: a killed parent's children move to init
        try:
            group = os.getpgid(p)
            if group != os.getpgrp():
                os.killpg(group, signal.SIGKILL)
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def die_with_parent():
    """A preexec_fn: the run gets SIGKILL when this process dies, even by SIGKILL, which no handler sees (Linux's
    prctl(PR_SET_PDEATHSIG); None where there is no prctl). Only the run itself: what it starts in sessions of
    their own is killed by kill_tree, while this process lives to do it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, TypeError):
        return None
    parent = os.getpid()
    args = [ctypes.c_ulong(a) for a in (int(signal.SIGKILL), 0, 0, 0)]  # built here: the child only calls

    def preexec():  # in the child, between fork and exec
        if prctl(1, *args) == 0 and os.getppid() != parent:  # 1: PR_SET_PDEATHSIG
            os.kill(os.getpid(), signal.SIGKILL)  # the parent died before prctl: its signal will never come
    return preexec


def kill_group(pid):
    """SIGKILL what is left of the process group a run started (its id is the run's pid)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def launch(ctx, name, cmd, env=None):
    """Run cmd in a session of its own, its console appended to the .log, cut at --timeout or --deadline.
    Returns (exit status or None if killed, why it failed or '', its console text, peak RSS in MiB)."""
    timeout = min(ctx['timeout'], time_left(ctx) - RESERVE_S)
    if timeout < 1:
        return None, 'no time left before --deadline', '', 0.0
    with open(ctx['log'], 'a') as log:
        log.write(f"\n==== {name}: {' '.join(cmd)}\n")
        log.flush()
        start = log.tell()
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=die_with_parent(), env={**os.environ, **(env or {})})
        killed, status, usage = False, None, None
        try:
            deadline = time.time() + timeout
            while status is None:  # reaped by wait4 itself: its usage covers the process and all it waited for
                if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):  # exited, not reaped
                    kill_group(process.pid)  # on a normal exit too: nothing it left behind keeps the GPU (its
                    _, status, usage = os.wait4(process.pid, 0)  # pid, the group's id, is not free to reuse yet)
                elif time.time() > deadline:
                    killed = True
                    kill_tree(process.pid)
                    _, status, usage = os.wait4(process.pid, 0)
                else:
                    time.sleep(0.2)
        finally:
            if status is None:  # interrupted (Ctrl-C, SIGTERM, SIGHUP): no worker is left holding the GPU
                kill_tree(process.pid)
                os.wait4(process.pid, 0)
        process.returncode = code = os.waitstatus_to_exitcode(status)
    with open(ctx['log'], errors='replace') as log:
        log.seek(start)
        text = log.read()
    lines = [line for line in text.splitlines() if line.strip()]
    if killed:
        cut = ' (cut at --deadline)' if timeout < ctx['timeout'] else ''
        return None, f'no result within {timeout:.0f} s{cut}; the run and every process below it killed', text, 0.0
    why = '' if code == 0 else next(
        (line.removeprefix('error: ') for line in reversed(lines) if line.startswith('error: ')),
        lines[-1] if lines else f'exit status {code}')
    return code, why, text, usage.ru_maxrss / 2 ** 10  # KiB on Linux


def train(ctx, name, args, ranks=0, env=None):
    """train.py (under torchrun with `ranks` processes if given) in its own out_dir:
    (exit status, why it failed, its run logs, console text, peak RSS in MiB of its largest process)."""
    out_dir = os.path.join(ctx['work'], name)
    cmd = [*(torchrun(ranks) if ranks else [sys.executable]), os.path.join(ROOT, 'train.py'), *args,
           f'--out_dir={out_dir}', '--overwrite=True']
    code, why, text, rss = launch(ctx, name, cmd, env)
    return code, why, keep_logs(ctx, name, out_dir), text, rss


def torchrun(ranks):
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={ranks}']


def keep_logs(ctx, name, out_dir):
    """The run's train.py logs, also appended to the results' _runs.jsonl."""
    try:
        logs = runlog.load_all(out_dir)
    except (OSError, ValueError):
        return []
    if logs:
        with open(ctx['runs'], 'a') as f:
            f.write(json.dumps({'run': name, 'logs': logs}) + '\n')
    return logs


def time_left(ctx):
    return ctx['deadline_at'] - time.time() if ctx['deadline_at'] else float('inf')


# ---------------------------------------------------------------- preflight (in this process)

def attempt(function, *args):
    """function(*args), or what went wrong: one broken check must not cost the others."""
    try:
        return function(*args)
    except Exception as e:
        return {'error': f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'}


def nvidia_smi():
    if not shutil.which('nvidia-smi'):
        return 'not found'

    def query(*args):
        done = subprocess.run(['nvidia-smi', *args], capture_output=True, text=True, timeout=10)
        return done.returncode, (done.stderr or done.stdout if done.returncode else done.stdout).strip().splitlines()
    code, gpus = query('--query-gpu=name,driver_version,power.limit,power.max_limit,clocks.max.sm,memory.total,'
                       'memory.used,utilization.gpu,temperature.gpu,persistence_mode', '--format=csv')
    if code:  # a driver that does not know one of those fields: the ones every driver knows
        code, gpus = query('--query-gpu=name,driver_version,power.limit,memory.total,memory.used', '--format=csv')
    code, apps = query('--query-compute-apps=pid,process_name,used_memory', '--format=csv,noheader')
    return {'gpus': gpus, 'other_processes': [] if code else apps, **({'processes_error': apps} if code else {})}


def versions():
    out = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,
           'cudnn': torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    nccl = torch.cuda.nccl.version() if torch.cuda.is_available() else None  # a tuple, in older torch an int
    out['nccl'] = '.'.join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
    try:
        import triton
        out['triton'] = triton.__version__
    except ImportError:
        out['triton'] = None
    return out


def toolchain():
    """Triton compiles its launcher with a C compiler against Python.h: without them every compiled step fails."""
    gcc = shutil.which('gcc') or shutil.which('cc')
    header = os.path.join(sysconfig.get_paths()['include'], 'Python.h')
    first = subprocess.run([gcc, '--version'], capture_output=True, text=True, timeout=10).stdout.splitlines()[:1] \
        if gcc else []
    return {'cc': first[0] if first else None, 'python_h': header if os.path.isfile(header) else None}


def matmul_tflops(device, m, k, n, repeats):
    """bf16 (m x k) @ (k x n): TFLOP/s over repeats after one warm-up."""
    a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    b = torch.randn(k, n, device=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    a @ b
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return round(2 * m * k * n * repeats / (time.perf_counter() - start) / 1e12, 4)


def model_config(path, tiny, **overrides):
    """A config file's model, as train.py builds it (the padded vocabulary; the tiny sizes with --tiny)."""
    from model import GPTConfig
    values = runpy.run_path(os.path.join(ROOT, path))
    names = {f.name for f in dataclasses.fields(GPTConfig)}
    fields = {k: v for k, v in values.items() if k in names}
    fields.update(TINY if tiny else {}, vocab_size=(TINY_VOCAB if tiny else VOCAB)['model'], **overrides)
    return GPTConfig.from_preset(values['arch_preset'], **fields)


def grouped_check(device, tiny):
    """The MoE-200M layer's grouped dispatch against the per-expert loop, bf16 autocast as in training: relative
    error (norm of the difference over the loop's norm) of the output and every gradient, and ms per forward +
    backward of each."""
    import model as M
    config = model_config(MOE, tiny, **({'moe_intermediate_size': 64} if tiny else {}))
    tokens = 256 if tiny else BATCH[MOE] * config.block_size
    torch.manual_seed(0)
    with torch.device(device):
        moe = M.MoE(config)
        x = torch.randn(tokens, config.n_embd, requires_grad=True)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, config.init_std)
        probs = torch.softmax(moe.router(x).float(), dim=-1)
        weights, experts = probs.topk(config.n_expert_per_token, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).flatten()
    flat = experts.flatten()
    counts = torch.bincount(flat, minlength=config.n_expert)
    params = [x] + [p for p in (moe.w_up, moe.w_gate, moe.w_down) if p is not None]
    grad = torch.randn(tokens, config.n_embd, device=device)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    results, ms = {}, {}
    for name, dispatch in (('grouped', moe.dispatch_grouped), ('loop', moe.dispatch_loop)):
        for repeat in range(2 if tiny else 4):  # the first: warm-up
            sync()
            start = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16):
                out = dispatch(x, flat, counts, weights)
            grads = torch.autograd.grad(out, params, grad.to(out.dtype))
            sync()
            ms[name] = round((time.perf_counter() - start) * 1000, 3)
        results[name] = [out, *grads]

    def error(a, b):
        return (a.float() - b.float()).norm().item() / max(b.float().norm().item(), 1e-30)
    names = ['output', 'x', 'w_up', 'w_gate', 'w_down'][:len(results['loop'])]
    errors = {n: error(a, b) for n, a, b in zip(names, results['grouped'], results['loop'])}
    return {'tokens': tokens, 'experts': config.n_expert, 'top_k': config.n_expert_per_token,
            'relative_error': errors, 'worst': max(errors.values()), 'grouped_ms': ms['grouped'], 'loop_ms': ms['loop']}


def attention_probe(device, tiny):
    """The kernel train.py names for each flash_attention setting, at the runs' shapes in bf16."""
    out = {}
    for label, path in (('gpt2_124m', GPT2), ('moe_200m (GQA)', MOE)):
        config = model_config(path, tiny)
        for setting in ('auto', 'require', 'off'):
            try:
                out[f'{label}, {setting}'] = perf.attention_for_run(setting, config, device, 'bfloat16')[1]
            except ValueError as e:
                out[f'{label}, {setting}'] = f'refused: {e}'
    return out


def step_preflight(ctx):
    device, tiny = ctx['device'], ctx['tiny']
    cuda = device == 'cuda'
    result = {'status': 'ok', 'nvidia_smi': attempt(nvidia_smi), 'versions': attempt(versions),
              'compute_capability': '.'.join(map(str, torch.cuda.get_device_capability())) if cuda else None,
              'toolchain': attempt(toolchain)}
    # the square shows the card's own bf16 rate; the others are GPT-2 124M's matmuls at 16 x 1024 tokens
    shapes = {'square': (8192, 8192, 8192), 'qkv': (16384, 768, 2304), 'ffn up': (16384, 768, 3072),
              'ffn down': (16384, 3072, 768), 'head': (16384, 768, 50304)}
    result['matmul_tflops'] = {}
    for name, shape in shapes.items():
        m, k, n = (s // 32 if tiny else s for s in shape)
        result['matmul_tflops'][f'{name} {m}x{k}x{n}'] = attempt(matmul_tflops, device, m, k, n, 3 if tiny else 20)
    peak = perf.gpu_peak_tflops(torch.cuda.get_device_name(), 'bfloat16') if cuda else None
    result['datasheet_bf16_tflops'] = peak
    result['grouped_mm'] = attempt(grouped_check, device, tiny)
    result['attention_kernels'] = attempt(attention_probe, device, tiny)
    warnings = []
    if isinstance(result['nvidia_smi'], dict) and result['nvidia_smi'].get('other_processes'):
        warnings.append(f"other processes on the GPU: {'; '.join(result['nvidia_smi']['other_processes'])}")
    chain = result['toolchain']
    if cuda and (not chain.get('cc') or not chain.get('python_h')):
        warnings.append('no C compiler or no Python.h: Triton cannot compile, so the compiled steps will fail')
    worst = result['grouped_mm'].get('worst')
    if worst is None or worst > 2e-2:  # bf16 rounding gives ~3e-3 between two correct kernels
        result['status'] = 'failed'
        result['reason'] = (f'grouped dispatch differs from the per-expert loop by {worst:.1e} (relative)'
                            if worst is not None else f"grouped dispatch: {result['grouped_mm'].get('error')}")
    if warnings:
        result['warnings'] = warnings
    if cuda:
        torch.cuda.empty_cache()  # the runs that follow are other processes: leave them the memory
    return result


# ---------------------------------------------------------------- the runs

def data_args(ctx):
    return [f"--data_dir={ctx['data']}", f"--vocab_size={ctx['vocab']['model']}"]


def step_flash(ctx):
    code, why, logs, _, _ = train(ctx, 'flash', [GPT2, *ctx['tiny_args'], *data_args(ctx), '--max_iters=2',
                                                 '--batch_size=2', '--eval_iters=0', '--save_checkpoints=False',
                                                 '--dtype=bfloat16', '--flash_attention=require'])
    if code == 0:
        return {'status': 'ok', 'attention_kernel': logs[-1]['startup_info']['hardware']['attention_kernel']}
    # without CUDA, refusing is the right answer: the check itself worked
    return {'status': 'failed' if ctx['cuda'] else 'unavailable', 'reason': why}


def throughput_row(ctx, name, config, compile_flag, iters=None):
    """One training-throughput run (bench/bench.py's row) in bf16, as training at speed runs."""
    iters = iters or ctx['iters']
    overrides = ['--dtype=bfloat16', f"--batch_size={2 if ctx['tiny'] else BATCH[config]}",
                 '--gradient_accumulation_steps=1', f"--vocab_size={ctx['vocab']['model']}",
                 f'--log_interval={max(1, min(10, iters // 3))}', f'--grad_stats_interval={10 ** 9}',
                 *ctx['tiny_args']]
    out_dir = os.path.join(ctx['work'], name)
    command = bench.train_command(os.path.join(ROOT, config), compile_flag, iters, overrides, ctx['data'], out_dir)
    code, why, text, _ = launch(ctx, name, command, COMPILE_LOGS if compile_flag else None)
    logs = keep_logs(ctx, name, out_dir)
    if code != 0 or not logs or not logs[-1]['training_iterations']:
        return {'target': config, 'compile': compile_flag, 'error': why or 'no iterations logged'}
    row = bench.row(config, compile_flag, logs[-1])
    if compile_flag:  # what TORCH_LOGS printed: the lines themselves are in the .log
        row.update(graph_breaks=text.count('[__graph_breaks] Graph break'),
                   recompiles=text.count('[__recompiles] Recompiling function'))
    print('   ' + bench.table([row]).splitlines()[-1], flush=True)
    return row


def rows_result(rows):
    return {'status': 'failed' if any('error' in r for r in rows) else 'ok', 'rows': rows,
            **({'reason': '; '.join(r['error'] for r in rows if 'error' in r)} if any('error' in r for r in rows)
               else {})}


def step_moe_eager(ctx):
    return rows_result([throughput_row(ctx, 'moe_eager', MOE, False, None if ctx['tiny'] else MOE_EAGER_ITERS)])


def step_gpt2_compiled(ctx):
    return rows_result([throughput_row(ctx, 'gpt2_compiled', GPT2, True)])


def step_moe_compiled(ctx):
    return rows_result([throughput_row(ctx, 'moe_compiled', MOE, True)])


def step_gpt2_eager(ctx):
    return rows_result([throughput_row(ctx, 'gpt2_eager', GPT2, False)])


def step_llama(ctx):
    return rows_result([throughput_row(ctx, 'llama_eager', LLAMA, False),
                        throughput_row(ctx, 'llama_compiled', LLAMA, True)])


# train.py once per argument list, one after another in one process: one torchrun launch (and one interpreter,
# torch import and process group start per rank) for a run and its resume
EACH = """import json, runpy, sys
sys.path.insert(0, {root!r})
for argv in json.load(open(sys.argv[1])):
    print('==== train.py ' + ' '.join(argv[1:]), flush=True)
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name='__main__')
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
"""


def iteration_losses(logs):
    return {e['iter']: e['loss'] for log in logs for e in log['training_iterations']}


def step_fsdp(ctx):
    # fp32 on both sides: the same arithmetic, so the losses agree to rounding; an evaluation and a checkpoint
    # at iteration 3, which the resume starts from
    args = [GPT2, '--n_layer=4', '--block_size=256', *ctx['tiny_args'], *data_args(ctx), '--batch_size=4',
            '--max_iters=6', '--eval_interval=3', '--eval_iters=1', '--log_interval=1', '--dtype=float32',
            '--warmup_iters=2', '--lr_decay_iters=6']
    code, why, logs, _, _ = train(ctx, 'fsdp_plain', [*args, '--save_checkpoints=False'])
    if code != 0:
        return {'status': 'failed', 'reason': f'plain: {why}'}
    plain = iteration_losses(logs)
    script = os.path.join(ROOT, 'train.py')
    straight, resumed = (os.path.join(ctx['work'], f'fsdp_{n}') for n in ('straight', 'resumed'))
    plan = os.path.join(ctx['work'], 'fsdp_plan.json')
    each = os.path.join(ctx['work'], 'each.py')
    files.write_text(each, EACH.format(root=ROOT))
    files.write_json(plan, [[script, *args, '--parallelism=fsdp', f'--out_dir={straight}', '--overwrite=True'],
                            [script, *args, '--parallelism=fsdp', f'--out_dir={resumed}', '--init_from=resume',
                             f"--resume_from={os.path.join(straight, 'ckpt_3.pt')}"]])
    code, why, _, _ = launch(ctx, 'fsdp_straight_and_resumed', [*torchrun(1), each, plan])
    runs = {name: iteration_losses(keep_logs(ctx, f'fsdp_{name}', os.path.join(ctx['work'], f'fsdp_{name}')))
            for name in ('straight', 'resumed')}
    if code != 0:
        return {'status': 'failed', 'reason': f'fsdp: {why}'}
    fsdp, resume = runs['straight'], runs['resumed']
    if sorted(plain) != sorted(fsdp) or not plain or sorted(resume) != [i for i in sorted(fsdp) if i > 3]:
        return {'status': 'failed', 'reason': f'logged iterations differ: plain {sorted(plain)}, fsdp '
                                              f'{sorted(fsdp)}, resumed {sorted(resume)}'}
    worst = max(abs(plain[i] - fsdp[i]) for i in plain)
    worst_resume = max(abs(resume[i] - fsdp[i]) for i in resume)
    result = {'status': 'ok', 'max_loss_difference': worst, 'iterations': len(plain),
              'resume_max_loss_difference': worst_resume, 'resumed_iterations': sorted(resume),
              'device': logs[-1]['startup_info']['hardware'].get('device_name')}
    problems = ([f'FSDP losses differ from the plain process by up to {worst:.2e}'] if worst > 1e-3 else []) + \
               ([f'the resumed losses differ by up to {worst_resume:.2e}'] if worst_resume > 1e-4 else [])
    return {**result, 'status': 'failed', 'reason': '; '.join(problems)} if problems else result


def step_fsdp_big(ctx):
    model = ['--n_layer=2', '--n_head=4', '--n_embd=64', '--block_size=64'] if ctx['tiny'] else ['--block_size=2048']
    code, why, logs, _, peak_rss = train(ctx, 'fsdp_1.36b', [BIG, *model, *data_args(ctx), '--parallelism=fsdp',
                                                              '--dtype=bfloat16', '--batch_size=1', '--max_iters=3',
                                                              '--eval_iters=0', '--log_interval=1',
                                                              '--save_checkpoints=False'], ranks=1)
    if code != 0:
        return {'status': 'failed', 'reason': why}
    info = logs[-1]['startup_info']
    parameters = info['parameters']['total']
    return {'status': 'ok', 'parameters': parameters, 'fp32_model_mib': 4 * parameters / 2 ** 20,
            'peak_host_mib': peak_rss, 'first_step_s': info.get('warmup_s'),
            'peak_device_mib': max(e['memory_peak_mb'] or 0 for e in logs[-1]['training_iterations'])}


FLEX_TOLERANCE = {'cuda': 1e-2, 'cpu': 1e-4}  # relative: bf16 autocast on CUDA, fp32 on the CPU


def flex_check(sizes, x, documents, device):
    """attention_mask='document' through FlexAttention against SDPA with the boolean mask: the same weights, the same
    batch and document ids. On CUDA forward and backward under bf16 autocast, as training runs; on the CPU forward
    only, fp32, under no_grad (FlexAttention has no CPU backward), with FlexAttention forced on. The loss's absolute
    difference, the relative differences (norm of the difference over SDPA's norm) of the logits and, on CUDA, the
    largest over the parameters' gradients; within_tolerance: each relative one (the loss's too) within
    FLEX_TOLERANCE."""
    import document_attention
    from model import GPT, GPTConfig
    config = GPTConfig.from_preset('gpt2', attention_mask='document', **sizes)
    torch.manual_seed(1)
    with torch.device(device):
        model = GPT(config)
    cuda = device == 'cuda'
    got, previous = {}, document_attention.FLEX
    try:
        for path, flag in (('sdpa', False), ('flex', None if cuda else True)):  # None: flex, CUDA's default
            document_attention.FLEX = flag
            if document_attention.uses_flex(config, device, training=model.training) != (path == 'flex'):
                raise RuntimeError(f"attention_mask='document' does not take the {path} path with FLEX={flag}")
            model.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda), torch.set_grad_enabled(cuda):
                logits, loss = model(x, x, document_ids=documents)
                if cuda:
                    loss.backward()
            got[path] = (loss.item(), logits.detach().float(),
                         [p.grad.float() for p in model.parameters() if p.grad is not None])
            del logits, loss
    finally:
        document_attention.FLEX = previous

    def relative(a, b):
        return (a - b).norm().item() / max(b.norm().item(), 1e-30)

    def worst(values):  # max() would pass over a NaN that is not first
        return next((v for v in values if v != v), max(values))
    (sdpa_loss, sdpa_logits, sdpa_grads), (flex_loss, flex_logits, flex_grads) = got['sdpa'], got['flex']
    tolerance = FLEX_TOLERANCE['cuda' if cuda else 'cpu']
    out = {'forward_only': not cuda, 'dtype': 'bfloat16 autocast' if cuda else 'float32', 'loss': sdpa_loss,
           'max_loss_difference': abs(flex_loss - sdpa_loss),
           'logits_relative_difference': relative(flex_logits, sdpa_logits),
           'max_gradient_relative_difference': worst(list(map(relative, flex_grads, sdpa_grads))) if cuda else None,
           'tolerance': tolerance}
    relatives = [out['max_loss_difference'] / max(abs(sdpa_loss), 1e-30), out['logits_relative_difference'],
                 *([out['max_gradient_relative_difference']] if cuda else [])]
    out['within_tolerance'] = all(r <= tolerance for r in relatives)  # a NaN is not within
    del model
    return out


def flex_times(T, batch, steps, tiny, mean_document=256):
    """Print one line 'flex_times {json}': ms per training step (forward, backward, AdamW; bf16 autocast) of the
    same model with the causal mask and with attention_mask='document' (documents of 1 to 2 * mean_document
    tokens), and first flex_check's comparison of FlexAttention with SDPA's boolean mask on the same batch. Run by
    step_flex as a process of its own, so its timeout holds."""
    import document_attention
    from model import GPT, GPTConfig
    device = perf.default_device()
    sizes = {**TINY, 'vocab_size': TINY_VOCAB['model']} if tiny else \
        dict(n_layer=12, n_head=12, n_embd=768, vocab_size=VOCAB['model'])
    sizes['block_size'] = T
    torch.manual_seed(0)
    x = torch.randint(0, sizes['vocab_size'], (batch, T), device=device)
    lengths = torch.randint(1, 2 * mean_document + 1, (batch, T))
    documents = torch.stack([torch.repeat_interleave(torch.arange(T), row)[:T] for row in lengths]).to(device)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    out = {'T': T, 'batch': batch, 'mean_document': mean_document, 'device': device,
           'check': flex_check(sizes, x, documents, device)}
    for mask in ('causal', 'document'):
        config = GPTConfig.from_preset('gpt2', attention_mask=mask, **sizes)
        with torch.device(device):
            model = GPT(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = documents if mask == 'document' else None
        for i in range(2 + steps):  # two warm-up steps: FlexAttention compiles on the first
            if i == 2:
                sync()
                start = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16):
                _, loss = model(x, x, document_ids=ids)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        out[f'{mask}_ms'] = round((time.perf_counter() - start) * 1000 / steps, 3)
        if mask == 'document':
            out['document_kernel'] = 'flex' if document_attention.uses_flex(config, device, training=True) else \
                'SDPA with a boolean mask'
        del model, optimizer
    out['document_over_causal'] = round(out['document_ms'] / out['causal_ms'], 3)
    print('flex_times ' + json.dumps(out), flush=True)


def step_flex(ctx):
    try:
        import document_attention
        document_attention.uses_flex  # noqa: B018
    except (ImportError, AttributeError):
        return {'status': 'skipped', 'reason': "this checkout has no FlexAttention path for attention_mask='document'"}
    rows = []
    # one sequence length: with T=2048 too the step did not fit the documented --deadline 420 (a process each, each
    # compiling FlexAttention); tiny: documents short enough that every row has several, across 128-token blocks
    for T, batch, mean_document in ((256, 2, 32),) if ctx['tiny'] else ((1024, 8, 256),):
        code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); import gpu; "
                f"gpu.flex_times({T}, {batch}, {2 if ctx['tiny'] else 10}, {ctx['tiny']}, {mean_document})")
        status, why, text, _ = launch(ctx, f'flex_{T}', [sys.executable, '-c', code])
        line = next((line for line in text.splitlines() if line.startswith('flex_times ')), None)
        rows.append(json.loads(line.removeprefix('flex_times ')) if status == 0 and line else
                    {'T': T, 'batch': batch, 'error': why or 'no result printed'})
    return flex_result(rows)


def flex_result(rows):
    """The step's result: failed where a run failed or FlexAttention's outputs are not SDPA's within tolerance."""
    result = rows_result(rows)
    reasons = [result['reason']] if 'reason' in result else []
    for r in rows:
        c = r.get('check')
        if 'error' in r or (c and c['within_tolerance']):
            continue
        reasons.append(f"T={r['T']}: not checked" if not c else
                       f"T={r['T']}: FlexAttention differs from SDPA's boolean mask: loss by "
                       f"{c['max_loss_difference']:.1e}, logits {c['logits_relative_difference']:.1e}"
                       + (f", gradients {c['max_gradient_relative_difference']:.1e}"
                          if c['max_gradient_relative_difference'] is not None else '')
                       + f" (relative; tolerance {c['tolerance']:g})")
    if reasons:
        result.update(status='failed', reason='; '.join(reasons))
    return result


def step_shakespeare(ctx):
    prepared = os.path.join(ROOT, 'data', 'shakespeare_char')
    if ctx['shakespeare']:
        data_dir = os.path.join(ctx['work'], 'shakespeare_char')
        code, why, _, _ = launch(ctx, 'shakespeare_prepare', [
            sys.executable, os.path.join(prepared, 'prepare.py'), f"--input={ctx['shakespeare']}",
            f'--out_dir={data_dir}'])
        if code != 0:
            return {'status': 'failed', 'reason': f'prepare: {why}'}
    elif os.path.isfile(os.path.join(prepared, 'meta.json')):
        data_dir = prepared
    else:  # the GPU machine has no network: no download
        return {'status': 'skipped', 'reason': 'no --shakespeare PATH and no prepared data/shakespeare_char'}
    target = TARGETS['shakespeare_val_loss']
    if ctx['tiny']:
        target = 4.0  # from ln(65) = 4.17: the tiny model's 40 iterations get there
        limits = [*TINY_ARGS[:3], '--batch_size=4', '--max_iters=40', '--eval_interval=20', '--eval_iters=4',
                  '--compile=False', f'--target_val_loss={target}']
    else:
        limits = ['--compile=True', f'--target_val_loss={target}', '--max_time=80']  # inside the 120 s timeout
    code, why, logs, _, _ = train(ctx, 'shakespeare', ['config/train_shakespeare_char.py', f'--data_dir={data_dir}',
                                                       '--save_checkpoints=False', '--log_interval=50', *limits])
    if code != 0:
        return {'status': 'failed', 'reason': why}
    evals = [e for log in logs for e in log['eval_steps'] if 'val_loss' in e]
    reached = next((e for e in evals if e['val_loss'] <= target), None)
    return {'status': 'ok', 'target_val_loss': target, 'reached': reached is not None,
            'seconds_to_target': reached and reached['time_s'], 'iterations_to_target': reached and reached['iter'],
            'best_val_loss': min((e['val_loss'] for e in evals), default=None),
            'total_s': logs[-1]['summary'].get('total_time_s')}


# name: (function, estimated seconds on one H100, on the 2-core CPU in the tiny version); the estimates decide
# what still fits before --deadline
STEPS = {
    'preflight': (step_preflight, 15, 3),
    'flash': (step_flash, 20, 6),
    'moe_eager': (step_moe_eager, 40, 8),
    'gpt2_compiled': (step_gpt2_compiled, 80, 60),  # tiny: inductor's first compile on 2 cores, ~55 s
    'moe_compiled': (step_moe_compiled, 100, 60),
    'fsdp': (step_fsdp, 50, 15),
    'flex': (step_flex, 30, 6),
    'fsdp_1.36b': (step_fsdp_big, 60, 10),
    'gpt2_eager': (step_gpt2_eager, 30, 6),
    'llama': (step_llama, 100, 70),
    'shakespeare': (step_shakespeare, 130, 8),
}


# ---------------------------------------------------------------- the record

def row_line(r, target=''):
    label = f"{os.path.basename(r['target'])[:-3]}, {'compiled' if r['compile'] else 'eager'}"
    if 'error' in r:
        return f"| {label} | error: {r['error']} | |"
    mfu = f"{r['mfu']:.1%}" if r['mfu'] is not None else '-'
    compiled = f", {r['graph_breaks']} graph breaks, {r['recompiles']} recompiles" if 'graph_breaks' in r else ''
    return (f"| {label} | {r['tokens_per_sec']:,.0f} tokens/s, MFU {mfu}, {r['ms_per_iter']:.1f} ms/iter, "
            f"peak {r['peak_memory_mb']:,.0f} MiB, {r['tokens_per_iter']:,} tokens/iter, first step "
            f"{r['warmup_s']:.1f} s{compiled} | {target} |")


def step_lines(name, s):
    """The table rows of one step: its status unless ok, then its figures where it has them."""
    lines = [] if s['status'] == 'ok' else [f"| {name} | {s['status']}: {s.get('reason', '')} | |"]
    if s['status'] != 'ok' and name != 'preflight' and 'rows' not in s:
        return lines
    return lines + figure_lines(name, s)


def figure_lines(name, s):
    if name == 'preflight':
        smi = s['nvidia_smi']
        lines = [f"| preflight | {'; '.join(smi['gpus'][1:]) if isinstance(smi, dict) else f'nvidia-smi {smi}'} | |",
                 f"| versions | {', '.join(f'{k} {v}' for k, v in s['versions'].items())}; compute capability "
                 f"{s['compute_capability']}; cc {s['toolchain'].get('cc')}; Python.h "
                 f"{'present' if s['toolchain'].get('python_h') else 'missing'} | |"]
        peak = s['datasheet_bf16_tflops']
        for shape, tflops in s['matmul_tflops'].items():
            got = (f"{tflops} TFLOP/s" + (f' ({tflops / peak:.0%} of the datasheet)' if peak else '')
                   if isinstance(tflops, float) else f"error: {tflops.get('error')}")
            lines.append(f"| bf16 matmul {shape} | {got} | {peak or ''} |")
        g = s['grouped_mm']
        lines.append(f"| MoE grouped dispatch vs per-expert loop | " + (
            f"{g['tokens']} tokens: relative error up to {g['worst']:.1e}; forward + backward {g['grouped_ms']} ms "
            f"against {g['loop_ms']} ms" if 'worst' in g else f"error: {g.get('error')}") + " | < 2e-2 |")
        kernels = s['attention_kernels']
        lines.append(f"| SDPA kernels | {'; '.join(f'{k}: {v}' for k, v in kernels.items())} | flash |")
        lines += [f"| warning | {w} | |" for w in s.get('warnings', [])]
        return lines
    if name == 'flash':
        return [f"| flash | flash_attention='require' accepted; SDPA kernel {s['attention_kernel']} | flash |"]
    if 'rows' in s and name == 'flex':
        return [line for r in s['rows'] for line in flex_lines(r)]
    if 'rows' in s:
        target = (f">= {TARGETS['gpt2_mfu']:.0%} MFU ({ANCHORS})" if name == 'gpt2_compiled' else
                  f">= {TARGETS['moe_mfu']:.0%} MFU of active FLOPs" if name == 'moe_compiled' else '')
        return [row_line(r, target) for r in s['rows']]
    if name == 'fsdp':
        return [f"| fsdp | losses of {s['iterations']} iterations within {s['max_loss_difference']:.1e} of one "
                f"plain process; resumed from iteration 3: within {s['resume_max_loss_difference']:.1e} of "
                f"straight through | equal |"]
    if name == 'fsdp_1.36b':
        return [f"| fsdp_1.36b | {s['parameters'] / 1e9:.2f}B parameters ({s['fp32_model_mib']:,.0f} MiB in fp32): "
                f"peak host {s['peak_host_mib']:,.0f} MiB, peak device {s['peak_device_mib']:,.0f} MiB, first step "
                f"{s['first_step_s']:.1f} s | host < model |"]
    got = (f"val loss {s['target_val_loss']} at {s['seconds_to_target']:.1f} s (iteration {s['iterations_to_target']})"
           if s['reached'] else f"not reached; best val loss {s['best_val_loss']}")
    return [f"| shakespeare | {got} | <= {TARGETS['shakespeare_val_loss']} in < {TARGETS['shakespeare_s']:.0f} s |"]


def flex_lines(r):
    if 'error' in r:
        return [f"| flex, T={r['T']} | error: {r['error']} | |"]
    c = r['check']
    gradients = ('gradients not compared (forward only: FlexAttention has no CPU backward)'
                 if c['max_gradient_relative_difference'] is None else
                 f"gradients up to {c['max_gradient_relative_difference']:.1e} (relative)")
    return [f"| flex, T={r['T']} | batch {r['batch']}: document mask ({r['document_kernel']}) {r['document_ms']} "
            f"ms/step, causal {r['causal_ms']} ms/step: {r['document_over_causal']}x | <= 1x |",
            f"| flex = SDPA, T={r['T']} | FlexAttention against SDPA's boolean mask, {c['dtype']}: loss "
            f"{c['loss']:.4f} differs by {c['max_loss_difference']:.1e}, logits by "
            f"{c['logits_relative_difference']:.1e} (relative), {gradients}"
            f"{'' if c['within_tolerance'] else ': BEYOND TOLERANCE'} | <= {c['tolerance']:g} relative |"]


def report(record):
    """The markdown table: one line per figure, with its target where the project states one."""
    lines = [f"# GPU figures: {record['device']}", '',
             f"torch {record['torch']}, commit {record['git_commit']}, {record['time']}"
             + (' (tiny version: shapes and paths only, the figures mean nothing)' if record['tiny'] else ''), '',
             '| step | result | target |', '|---|---|---|']
    for name, s in record['steps'].items():
        try:
            lines += step_lines(name, s)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a figure missing: the .json has the rest
            lines.append(f"| {name} | {s.get('status')}: see the .json ({type(e).__name__}: {e}) | |")
    if record['pending']:
        lines.append(f"| not reached | {', '.join(record['pending'])} | |")
    return '\n'.join(lines) + '\n'


def write_results(base, record):
    """The record and its table, whole files replaced at once: a run cut off at any moment leaves both."""
    files.write_json(base + '.json', record)
    files.write_text(base + '.md', report(record))


def interrupted(signum, frame):
    raise KeyboardInterrupt  # SIGTERM or SIGHUP as Ctrl-C: the running step's processes are killed and the files written


def catch_signals():
    """SIGTERM and SIGHUP (a closed terminal or session) handled as Ctrl-C is: {signal: the handler before}."""
    return {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, getattr(signal, 'SIGHUP', None)) if sig}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tiny', action='store_true', help='tiny models and few steps (automatic without CUDA)')
    parser.add_argument('--steps', default=','.join(STEPS), help=f"comma-separated, from {', '.join(STEPS)}")
    parser.add_argument('--results_dir', default=os.path.join(ROOT, 'bench', 'results'))
    parser.add_argument('--deadline', type=float, default=0,
                        help='seconds from the start of this process: a step whose estimate no longer fits is skipped, runs are cut '
                             'at it (0: none)')
    parser.add_argument('--timeout', type=float, default=120, help='seconds per training run')
    parser.add_argument('--iters', type=int, default=0, help='iterations per throughput run (default 30; tiny 6)')
    parser.add_argument('--commit', default='', help='the commit being measured, where there is no .git')
    parser.add_argument('--shakespeare', default='', help='path to the Tiny Shakespeare text')
    args = parser.parse_args(argv)
    chosen = [s for s in args.steps.split(',') if s]
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        die(f"unknown step {unknown[0]!r}; allowed: {', '.join(STEPS)}")
    if args.shakespeare and not os.path.isfile(args.shakespeare):
        die(f"--shakespeare {args.shakespeare}: no such file")
    if args.deadline < 0 or args.timeout <= 0:
        die(f"--deadline must be 0 (none) or more and --timeout more than 0, not {args.deadline:g} and "
            f"{args.timeout:g}")
    if args.iters and args.iters < 3:
        die(f"--iters={args.iters}: at least 3 (the first is warm-up; the medians need log lines after it)")
    try:
        os.makedirs(args.results_dir, exist_ok=True)
    except OSError as e:
        die(f"--results_dir {args.results_dir}: {e.strerror or e}")
    device = perf.default_device()
    cuda = device == 'cuda'
    tiny = args.tiny or not cuda
    if not cuda:
        print("no CUDA device: running the tiny version of every step")
    repro = monitor.reproducibility_info(device)
    git = repro['git_commit'] and repro['git_commit'] + ('-dirty' if repro['git_dirty'] else '')
    name = torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine())
    steps = [s for s in STEPS if s in chosen]
    record = {'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'tiny': tiny, 'torch': torch.__version__,
              'cuda': torch.version.cuda, 'python': platform.python_version(), 'device': name,
              'git_commit': args.commit or git, 'commit_from': 'argument' if args.commit else 'git' if git else None,
              'command': ' '.join(['python', 'bench/gpu.py', *argv]), 'deadline_s': args.deadline or None,
              'timeout_s': args.timeout, 'steps': {}, 'pending': steps, 'total_s': 0.0, 'finished': False}
    device_word = re.sub(r'[^A-Za-z0-9._-]+', '_', name)  # a plain file name on any file system
    base = os.path.join(args.results_dir, f"gpu_{time.strftime('%Y%m%d_%H%M%S')}_{device_word}")
    start = STARTED  # --deadline: seconds from the start of this process
    previous = catch_signals()
    try:
        with tempfile.TemporaryDirectory() as work:
            vocab = TINY_VOCAB if tiny else VOCAB
            data = os.path.join(work, 'data')
            os.makedirs(data)
            bench.synthetic_data(data, vocab['data'])
            ctx = {'tiny': tiny, 'cuda': cuda, 'device': device, 'work': work, 'data': data, 'vocab': vocab,
                   'tiny_args': TINY_ARGS if tiny else [], 'iters': args.iters or (6 if tiny else 30),
                   'shakespeare': args.shakespeare, 'timeout': args.timeout,
                   'deadline_at': start + args.deadline if args.deadline else None,
                   'log': base + '.log', 'runs': base + '_runs.jsonl'}
            write_results(base, record)
            for step in steps:
                function, estimate = STEPS[step][0], STEPS[step][2 if tiny else 1]
                record['pending'] = record['pending'][1:]
                left = time_left(ctx)
                print(f"== {step}", flush=True)
                if estimate > left:
                    result = {'status': 'skipped', 'reason': f'needs about {estimate} s; {max(0, left):.0f} s left '
                                                             f'before --deadline {args.deadline:g}'}
                else:
                    t = time.time()
                    try:
                        result = function(ctx)
                    except KeyboardInterrupt:
                        record['steps'][step] = {'status': 'failed', 'reason': 'interrupted'}
                        raise
                    except Exception as e:  # one broken step must not cost the figures of the others
                        result = {'status': 'failed', 'reason': f'{type(e).__name__}: {e}'}
                    result['seconds'] = round(time.time() - t, 1)
                record['steps'][step] = result
                record['total_s'] = round(time.time() - start, 1)
                write_results(base, record)
                print(f"   {result['status']}" + (f" in {result['seconds']} s" if 'seconds' in result else '') +
                      (f": {result['reason']}" if result.get('reason') else ''), flush=True)
            record['finished'] = True
    except KeyboardInterrupt:
        print("interrupted: the results so far are written", file=sys.stderr)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        record['total_s'] = round(time.time() - start, 1)
        write_results(base, record)
    print('\n' + report(record))
    print(f"wrote {base}.json, .md, .log and _runs.jsonl ({record['total_s']:.0f} s in all)")
    if not record['finished']:
        return 130
    return 1 if any(s['status'] == 'failed' for s in record['steps'].values()) else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

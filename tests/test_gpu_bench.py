"""bench/gpu.py, the one command for every GPU figure, rehearsed on a CPU in its tiny version.

One run shares its record with the tests below: three steps run for real (preflight, moe_eager, fsdp) and every
other step is skipped by --deadline, deterministically (its estimate set out of reach), so every step's record is
still written. Each train.py start costs 2-3 s here, so the rest are left to the rehearsal of every step, measured
in bench/README.md: they are the same runs at other settings (compiling is tested in tests/test_gpu_ready.py, the
MoE through inductor, and tests/test_perf.py, train.py; flash_attention='require' refused without CUDA is asserted
through the preflight's probe below and in tests/test_perf.py)."""
import json
import os
import sys
import time

import pytest

from helpers import ROOT, run

sys.path.insert(0, os.path.join(ROOT, 'bench'))
import gpu  # noqa: E402

REAL = ['preflight', 'moe_eager', 'fsdp']


@pytest.fixture(scope='module')
def rehearsal(tmp_path_factory):
    results = tmp_path_factory.mktemp('results')
    on_disk = []  # the record as the files held it after each write
    write = gpu.write_results

    def write_and_read_back(base, record):
        write(base, record)
        on_disk.append(json.loads(open(base + '.json').read()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gpu, 'STEPS', {name: (function, gpu_s, 0 if name in REAL else 10 ** 6)
                                     for name, (function, gpu_s, _) in gpu.STEPS.items()})
        patch.setattr(gpu, 'write_results', write_and_read_back)
        status = gpu.main(['--tiny', f'--results_dir={results}', '--deadline=100000', '--commit=abc1234',
                           '--iters=3'])
    [path] = results.glob('*.json')
    return {'status': status, 'record': json.loads(path.read_text()), 'on_disk': on_disk,
            'base': str(path)[:-len('.json')]}


def test_every_step_is_recorded_as_it_ends(rehearsal):
    record, on_disk = rehearsal['record'], rehearsal['on_disk']
    assert rehearsal['status'] == 0 and record['finished'] and record['pending'] == []
    assert record['tiny'] and record['torch'] and record['git_commit'] == 'abc1234'
    assert record['commit_from'] == 'argument'
    names = list(gpu.STEPS)
    assert list(record['steps']) == names  # in the documented order
    # written before the first step, then after every step (the last write: the finished record)
    assert on_disk[0]['steps'] == {} and on_disk[0]['pending'] == names
    assert [list(r['steps']) for r in on_disk[1:-1]] == [names[:i + 1] for i in range(len(names))]
    assert [r['pending'] for r in on_disk[1:-1]] == [names[i + 1:] for i in range(len(names))]
    for name in names:
        assert record['steps'][name]['status'] == ('ok' if name in REAL else 'skipped'), name
    table = open(rehearsal['base'] + '.md').read()
    assert '| fsdp |' in table and 'full_moe_200m, eager' in table and 'tiny version' in table
    assert '| gpt2_compiled | skipped: needs about 1000000 s' in table


def test_a_step_that_no_longer_fits_the_deadline_is_skipped_with_the_reason(rehearsal):
    skipped = {n: s for n, s in rehearsal['record']['steps'].items() if n not in REAL}
    assert skipped and all(s['status'] == 'skipped' and '--deadline 100000' in s['reason'] for s in skipped.values())


def test_preflight(rehearsal):
    pre = rehearsal['record']['steps']['preflight']
    assert pre['versions']['torch'] and pre['toolchain'].keys() == {'cc', 'python_h'}
    assert len(pre['matmul_tflops']) == 5 and all(t > 0 for t in pre['matmul_tflops'].values())
    grouped = pre['grouped_mm']  # forward and every gradient, bf16, against the per-expert loop
    assert set(grouped['relative_error']) == {'output', 'x', 'w_up', 'w_gate', 'w_down'} and grouped['worst'] < 2e-2
    kernels = pre['attention_kernels']  # what the flash step's train.py run says too
    refused = kernels['gpt2_124m, require']
    assert "flash_attention='require'" in refused and 'needs CUDA' in refused
    assert kernels['moe_200m (GQA), off'] == 'math'


def test_throughput_runs_as_training_at_speed_runs(rehearsal):
    [row] = rehearsal['record']['steps']['moe_eager']['rows']
    assert row['dtype'] == 'bfloat16' and not row['compile'] and row['tokens_per_sec'] > 0
    assert row['timed_iters'] == 2  # --iters=3: all but the warm-up step
    with open(rehearsal['base'] + '_runs.jsonl') as f:
        runs = {r['run']: r['logs'] for r in map(json.loads, f)}
    assert set(runs) == {'moe_eager', 'fsdp_plain', 'fsdp_straight', 'fsdp_resumed'}
    config = runs['moe_eager'][0]['config']
    # the data's 500-token vocabulary padded (GPT-2's 50257 to 50304 on a GPU); no per-layer statistics
    assert config['vocab_size'] == 512 and config['grad_stats_interval'] == 10 ** 9
    log = open(rehearsal['base'] + '.log').read()  # every run's command and console
    assert '==== moe_eager:' in log and log.count('==== train.py') == 2 and 'stopped at iteration 6' in log


def test_fsdp_equals_a_plain_process_and_resumes_exactly(rehearsal):
    fsdp = rehearsal['record']['steps']['fsdp']
    assert fsdp['status'] == 'ok' and fsdp['iterations'] == 6 and fsdp['max_loss_difference'] <= 1e-6
    assert fsdp['resumed_iterations'] == [4, 5, 6] and fsdp['resume_max_loss_difference'] == 0.0


def alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'  # a zombie is dead, only not yet reaped
    except OSError:
        return False


def test_a_run_past_its_timeout_is_killed_with_every_process_below_it(tmp_path):
    # torchrun starts each worker in a session of its own, out of its process group: this child does the same
    child = ("import subprocess, sys, time; print(subprocess.Popen([sys.executable, '-c', 'import time; "
             "time.sleep(60)'], start_new_session=True).pid, flush=True); time.sleep(60)")
    ctx = {'timeout': 1, 'deadline_at': None, 'log': str(tmp_path / 'runs.log')}
    started = time.time()
    status, why, text, _ = gpu.launch(ctx, 'sleeper', [sys.executable, '-c', child])
    assert status is None and 'no result within 1 s' in why and time.time() - started < 10
    grandchild = int(text.split()[0])
    deadline = time.time() + 5
    while alive(grandchild) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild)


def test_gpu_bench_rejects_bad_arguments(tmp_path):
    # in-process: the same exit status and stderr as a command (errors.die), each refused before any step starts
    for args, message in ((['--steps=flash,warp'], "unknown step 'warp'"),
                          (['--shakespeare=/nonexistent.txt'], 'no such file'),
                          (['--deadline=-1'], '--deadline must be 0'),
                          (['--iters=2'], '--iters=2: at least 3')):
        result = run('bench/gpu.py', *args, f'--results_dir={tmp_path}')
        assert result.returncode == 2 and message in result.stderr and 'Traceback' not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_the_kernel_probe_runs_what_training_runs(monkeypatch):
    # SDPA picks its kernel by the sequence length and by whether the inputs need gradients: the probe behind
    # flash_attention's checks and the kernel train.py names uses the run's own, and draws no random numbers
    import torch
    import perf
    from model import GPTConfig
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append((q.shape, k.shape, q.requires_grad, kwargs['enable_gqa']))
        return sdpa(q, k, v, **kwargs)
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention', spy)
    config = GPTConfig.from_preset('moe', n_layer=1, n_head=4, n_kv_head=2, n_embd=64, block_size=512)
    state = torch.get_rng_state()
    assert perf.sdpa_backend_in_use(config, 'cpu', torch.float32, perf.attention_context('auto')) != 'manual'
    assert calls == [((1, 4, 512, 16), (1, 2, 512, 16), True, True)] and torch.equal(state, torch.get_rng_state())


def test_rope_tables_are_built_on_the_cpu_whatever_the_default_device():
    # train.py builds the model under `with torch.device('cuda')`: tables built there differed in the last digits
    # from the CPU's (and between plain and FSDP builds); the meta device stands in for CUDA here
    import torch
    from model import GPT, GPTConfig
    config = GPTConfig.from_preset('llama', n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=61)
    direct = GPT(config)
    with torch.device('meta'):
        model = GPT(config)
    model.to_empty(device='cpu')
    with torch.device('meta'):
        model.init_weights()
    assert torch.equal(model.rope_cos, direct.rope_cos) and torch.equal(model.rope_sin, direct.rope_sin)


@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
def test_the_flex_step_checks_flexattention_against_sdpa(monkeypatch):
    # the same weights and batch with document ids through SDPA's boolean mask and through FlexAttention (forced
    # on: the CPU's default is SDPA; forward only, fp32): equal within 1e-4; a wrong block mask fails the step
    import torch
    import document_attention
    sizes = {**gpu.TINY, 'vocab_size': 512, 'block_size': 256}
    torch.manual_seed(0)
    x = torch.randint(0, 512, (2, 256))
    documents = torch.stack([torch.repeat_interleave(torch.arange(256), torch.randint(1, 65, (256,)))[:256]
                             for _ in range(2)])  # several documents a row, across the 128-token blocks
    calls = []
    flex = document_attention.flex
    monkeypatch.setattr(document_attention, 'flex', lambda *args: calls.append(1) or flex(*args))
    check = gpu.flex_check(sizes, x, documents, 'cpu')
    assert calls and document_attention.FLEX is None  # the flex path ran, and the setting is put back
    assert check['within_tolerance'] and check['forward_only'] and check['tolerance'] == 1e-4
    assert check['max_loss_difference'] < 1e-5 and check['logits_relative_difference'] < 1e-5
    row = {'T': 256, 'batch': 2, 'check': check, 'document_kernel': 'SDPA with a boolean mask', 'document_ms': 2.0,
           'causal_ms': 1.0, 'document_over_causal': 2.0}
    assert gpu.flex_result([row])['status'] == 'ok'
    assert "| flex = SDPA, T=256 | FlexAttention against SDPA's boolean mask, float32" in '\n'.join(
        gpu.flex_lines(row))
    block_mask = document_attention.block_mask  # a mask that ignores the documents: causal only
    monkeypatch.setattr(document_attention, 'block_mask', lambda ids: block_mask(torch.zeros_like(ids)))
    wrong = gpu.flex_check(sizes, x, documents, 'cpu')
    assert not wrong['within_tolerance'] and wrong['logits_relative_difference'] > 1e-2
    result = gpu.flex_result([{**row, 'check': wrong}])
    assert result['status'] == 'failed' and "T=256: FlexAttention differs from SDPA's boolean mask" in result['reason']


def test_the_documented_deadline_reaches_the_flex_step():
    # `--deadline 420` (bench/README.md) by the script's own estimates: every step up to fsdp_1.36b fits, flex too
    elapsed, fits = 0, []
    for name, (_, gpu_s, _) in gpu.STEPS.items():
        if gpu_s <= 420 - elapsed:
            elapsed += gpu_s
            fits.append(name)
    assert fits == list(gpu.STEPS)[:8] and 'flex' in fits and fits.index('flex') < fits.index('fsdp_1.36b')


def test_the_deadline_counts_from_the_start_of_the_process(tmp_path, monkeypatch):
    # the clock starts before torch's import, not when main() starts: 1000 s gone, 2 s left of --deadline 1002
    monkeypatch.setattr(gpu, 'STARTED', time.time() - 1000)
    assert gpu.main(['--tiny', '--steps=flash', '--deadline=1002', f'--results_dir={tmp_path}']) == 0
    [path] = tmp_path.glob('*.json')
    flash = json.loads(path.read_text())['steps']['flash']
    assert flash['status'] == 'skipped' and 'before --deadline 1002' in flash['reason']


def launcher(tmp_path, name):
    """A process running gpu.launch (with gpu.py's signal handling) on a child that starts a grandchild in a session
    of its own, as torchrun does; both sleep. Returns (the launcher, the child's pid, the grandchild's)."""
    log = tmp_path / f'{name}.log'
    child = ("import os, subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; "
             "time.sleep(60)'], start_new_session=True); print(os.getpid(), g.pid, flush=True); time.sleep(60)")
    code = (f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'bench')!r}); import gpu; gpu.catch_signals(); "
            f"gpu.launch({{'timeout': 60, 'deadline_at': None, 'log': {str(log)!r}}}, 'sleeper', "
            f"[sys.executable, '-c', {child!r}])")
    import subprocess
    return subprocess.Popen([sys.executable, '-c', code]), log


def pids_in(log, deadline):
    while time.time() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) > 1 and len(lines[-1].split()) == 2:
            return [int(p) for p in lines[-1].split()]
        time.sleep(0.05)
    raise AssertionError(f'no pids in {log}')


def test_runs_die_with_gpu_py_even_when_it_is_killed(tmp_path):
    import signal
    started = {name: launcher(tmp_path, name) for name in ('killed', 'hung_up')}
    deadline = time.time() + 30
    pids = {name: pids_in(log, deadline) for name, (_, log) in started.items()}
    try:
        started['killed'][0].kill()  # SIGKILL, which no handler sees: the run gets its parent-death signal
        started['hung_up'][0].send_signal(signal.SIGHUP)  # as SIGTERM: the run and every process below it killed
        for process, _ in started.values():
            process.wait(timeout=10)
        gone = [pids['killed'][0], *pids['hung_up']]
        while any(map(alive, gone)) and time.time() < deadline:
            time.sleep(0.05)
        assert not any(map(alive, gone)), {p: alive(p) for p in gone}
    finally:
        for pid in [p for ps in pids.values() for p in ps]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_what_a_run_leaves_in_its_process_group_is_killed_when_it_exits(tmp_path):
    # the run exits at once and normally; its own child, in its group, would sleep on
    child = ("import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', 'import time; "
             "time.sleep(60)']).pid, flush=True)")
    status, why, text, _ = gpu.launch({'timeout': 30, 'deadline_at': None, 'log': str(tmp_path / 'runs.log')},
                                      'leaves', [sys.executable, '-c', child])
    assert status == 0 and why == ''
    left = int(text.split()[-1])
    deadline = time.time() + 5
    while alive(left) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(left)

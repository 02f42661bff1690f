"""bench/ablate.py and its report: statistics on known inputs, seeds, budgets, parallel jobs, failures, resuming a
sweep, the SLURM scripts."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from helpers import ROOT, TINY_MODEL, make_char_dataset, run, run_logs

sys.path.insert(0, os.path.join(ROOT, 'bench'))
import ablate  # noqa: E402
import ablate_report as report  # noqa: E402

RUN = ['--max_iters=6', '--eval_interval=3', '--log_interval=1', '--lr_decay_iters=6', '--warmup_iters=1']


# ---- statistics on known inputs ----

def test_summary_and_paired_difference_on_known_inputs():
    pytest.importorskip('scipy')
    s = report.summarize([1.0, 2.0, 3.0])
    assert s['mean'] == 2.0 and s['std'] == 1.0
    assert s['half_width'] == pytest.approx(4.303 / 3 ** 0.5, rel=1e-4)  # t(0.975, 2 df) * std / sqrt(n)
    assert report.summarize([5.0])['half_width'] is None and report.summarize([])['mean'] is None
    # differences 0.10, 0.12, 0.11: mean 0.11, std 0.01, interval 0.11 +- 0.0248: beyond noise
    d = report.paired_difference({1: 2.10, 2: 2.22, 3: 2.01}, {1: 2.00, 2: 2.10, 3: 1.90})
    assert d['mean'] == pytest.approx(0.11) and d['std'] == pytest.approx(0.01)
    assert d['half_width'] == pytest.approx(4.303 * 0.01 / 3 ** 0.5, rel=1e-4) and d['significant']
    # differences +0.1, -0.1, 0.0: mean 0, no difference; only seeds both sides have count
    d = report.paired_difference({1: 1.1, 2: 0.9, 3: 1.0, 4: 7.0}, {1: 1.0, 2: 1.0, 3: 1.0})
    assert d['seeds'] == [1, 2, 3] and d['mean'] == pytest.approx(0.0) and d['significant'] is False


def test_t_critical_values_are_the_printed_table():
    pytest.importorskip('scipy')
    # the two-sided 95% values of Student's t for 1..30 degrees of freedom, as statistics tables print them
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
             2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
             2.042]
    assert [round(report.t_critical(df), 3) for df in range(1, 31)] == table
    assert report.t_critical(500) == pytest.approx(1.965, abs=1e-3)  # towards the normal 1.96


def fake_run(val_loss):
    return {'evals': [{'iter': 10, 'val_loss': val_loss}], 'log_lines': [], 'iterations': 10, 'tokens': 100,
            'train_flops': 1e9, 'tokens_per_sec': 1000.0, 'wall_time_s': 1.0, 'downstream': {}}


def test_aggregate_verdicts_and_the_answer_sentence():
    pytest.importorskip('scipy')
    losses = {'baseline': [2.00, 2.10, 1.90], 'rope': [1.88, 1.99, 1.77], 'rms': [2.01, 2.08, 1.92],
              'swiglu': [2.05, 2.16, 1.94]}
    runs = {(v, seed): fake_run(x) for v, xs in losses.items() for seed, x in zip((1, 2, 3), xs)}
    runs[('rms', 3)] = {'error': 'exit status 1: boom'}
    rows = report.aggregate(list(losses), runs)
    by = {r['variant']: r for r in rows}
    assert by['baseline']['final_val_loss']['mean'] == pytest.approx(2.0)
    assert by['rope']['verdict'] == 'better' and by['rope']['difference']['mean'] == pytest.approx(-0.12)
    assert by['rms']['verdict'] == 'no difference beyond seed noise' and by['rms']['failed'] == [3]
    assert by['rms']['difference']['seeds'] == [1, 2]
    assert by['swiglu']['verdict'] == 'worse'
    text = report.answer(rows, [1, 2, 3])
    assert text.startswith('best: rope, val loss -0.1200 ± 0.0248 against the baseline over 3 seeds (paired t-test')
    assert 'rms: no difference beyond seed noise' in text and 'swiglu: worse' in text and 'rms (seeds 3)' in text
    one = report.aggregate(['baseline', 'rope'], {('baseline', None): fake_run(2.0), ('rope', None): fake_run(1.9)})
    assert one[1]['verdict'] == 'one seed: no interval'
    assert 'no difference can be told from seed noise' in report.answer(one, [None])


# ---- the tool ----

@pytest.fixture(scope='module')
def sweep(tmp_path_factory):
    """One ablation with 2 seeds, an equal-FLOPs budget, 2 jobs at once and a variant that fails to start."""
    pytest.importorskip('scipy')  # the report's intervals
    root = tmp_path_factory.mktemp('ablate')
    data = make_char_dataset(root / 'data')
    args = [f'--data_dir={data}', *TINY_MODEL, *RUN, '--vary', 'ffn_type=standard', 'n_kv_head=3',
            '--seeds', '2', '--budget', 'flops', '--jobs', '2', f'--out_root={root / "abl"}']
    result = run('bench/ablate.py', *args)  # in-process: ablate.py's runs and probes are processes of their own
    return root, data, args, result


def test_runs_seeds_and_budget(sweep):
    root, _, _, result = sweep
    out = root / 'abl'
    assert result.returncode == 1, result.stdout + result.stderr  # a failed variant makes the exit status 1
    logs = {(v, s): run_logs(out / v / f'seed{s}')[0] for v in ('baseline', 'ffn_type=standard') for s in (1, 2)}
    # the seed decides the initial weights and the data order: the first losses differ between seeds
    first = {k: log['training_iterations'][0]['loss'] for k, log in logs.items()}
    assert first[('baseline', 1)] != first[('baseline', 2)]
    assert {log['config']['seed'] for log in logs.values()} == {1, 2}
    # equal FLOPs: llama's SwiGLU costs more per token than the standard FFN, so the standard variant trains longer
    flops = {k: log['summary']['iterations'] * log['startup_info']['training']['tokens_per_iter']
             * log['startup_info']['performance']['flops_per_token'] for k, log in logs.items()}
    per_iteration = {k: flops[k] / log['summary']['iterations'] for k, log in logs.items()}
    assert logs[('ffn_type=standard', 1)]['summary']['iterations'] > 6 == logs[('baseline', 1)]['summary']['iterations']
    for k in flops:
        assert abs(flops[k] - flops[('baseline', 1)]) <= per_iteration[k] / 2 + 1e-6 * flops[k]
    assert logs[('ffn_type=standard', 1)]['config']['lr_decay_iters'] == logs[('ffn_type=standard', 1)]['config']['max_iters']


def test_failure_is_reported_and_the_report_answers(sweep):
    root, _, _, result = sweep
    out = root / 'abl'
    assert 'n_kv_head=3 seed 1: FAILED' in result.stdout and 'n_kv_head=3 seed 2: FAILED' in result.stdout
    text = (out / 'comparison.md').read_text()
    assert text.startswith('# Ablation of the defaults\n\n**Answer:** ')
    assert 'failed runs: n_kv_head=3 (seeds 1, 2)' in text and 'equal training FLOPs' in text
    assert '| ffn_type=standard | 2 |' in text and '| n_kv_head=3 | 0 (2 failed) |' in text
    pytest.importorskip('matplotlib')
    assert (out / 'loss_curves.png').stat().st_size > 10_000 and (out / 'final_val_loss.png').exists()


def test_rerun_skips_finished_runs_and_json_report(sweep):
    root, _, args, _ = sweep
    out = root / 'abl'
    stamps = {p: os.path.getmtime(p) for p in out.glob('*/seed*/run_*.json')}
    again = run('bench/ablate.py', *args, '--format', 'json')
    assert '4 of 6 runs already finished: skipped' in again.stdout
    assert {p: os.path.getmtime(p) for p in out.glob('*/seed*/run_*.json')} == stamps
    changed = run('bench/ablate.py', *[a.replace('--max_iters=6', '--max_iters=7') for a in args])
    assert changed.returncode == 2 and 'holds a run of another command' in changed.stderr  # never reuse stale runs
    record = json.loads((out / 'comparison.json').read_text())
    assert record['budget'] == 'flops' and record['seeds'] == [1, 2] and record['answer']
    assert [v['variant'] for v in record['variants']] == ['baseline', 'ffn_type=standard', 'n_kv_head=3']


def test_jobs_in_parallel_equal_one_after_another(sweep, tmp_path, monkeypatch):
    import shutil
    root, data, _, _ = sweep
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)  # the one job gets the cores (tests/conftest.py sets 1)
    # the sweep's one-step probes of these two variants (the same train.py commands): not probed again
    shutil.copyfile(root / 'abl' / 'probes.json', tmp_path / 'probes.json')
    result = run('bench/ablate.py', f'--data_dir={data}', *TINY_MODEL, *RUN, '--vary', 'ffn_type=standard',
                 '--seeds', '2,', '--budget', 'flops', '--jobs', '1', f'--out_root={tmp_path}')
    assert result.returncode == 0, result.stdout + result.stderr
    for variant in ('baseline', 'ffn_type=standard'):
        for seed in (2,):  # seed 2 alone, one job, against the sweep's seed 2, run two at a time
            alone = run_logs(tmp_path / variant / f'seed{seed}')[0]
            shared = run_logs(root / 'abl' / variant / f'seed{seed}')[0]
            # 1 thread each (2 jobs) against 2 threads (1 job): float rounding apart, the same runs
            assert [e['iter'] for e in alone['training_iterations']] == [e['iter'] for e in shared['training_iterations']]
            for a, b in zip(alone['training_iterations'], shared['training_iterations']):
                assert a['loss'] == pytest.approx(b['loss'], rel=1e-4)


def test_slurm_scripts_are_well_formed(tmp_path):
    base = os.path.join(ROOT, 'config', 'train_shakespeare_char_cpu.py')
    result = run('bench/ablate.py', base, '--vary', 'position_encoding=rope', 'normalization=rmsnorm',
                 '--seeds', '3', '--emit', 'slurm', '--max_iters=50', f'--out_root={tmp_path}')
    assert result.returncode == 0, result.stdout + result.stderr
    folder = tmp_path / 'slurm'
    lines = (folder / 'runs.txt').read_text().splitlines()
    assert len(lines) == 9  # 3 variants x 3 seeds
    out_dirs = set()
    for line in lines:
        argv = shlex.split(line)
        assert argv[1] == os.path.join(ROOT, 'train.py') and argv[2] == base and '--init_from=auto' in argv
        out_dirs.add(next(a for a in argv if a.startswith('--out_dir=')))
    assert len(out_dirs) == 9
    array = (folder / 'array.sbatch').read_text()
    assert '#SBATCH --array=0-8\n' in array and 'SLURM_ARRAY_TASK_ID' in array
    assert '--report' in (folder / 'report.sbatch').read_text()
    assert 'afterany' in (folder / 'submit.sh').read_text()
    for name in ('array.sbatch', 'report.sbatch', 'submit.sh'):
        assert subprocess.run(['bash', '-n', str(folder / name)]).returncode == 0
    # a task runs its own line: emulate task 4 with a stub python that prints its arguments
    task = subprocess.run(['bash', '-c', f'SLURM_ARRAY_TASK_ID=4; sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {folder}/runs.txt'],
                          capture_output=True, text=True)
    assert task.stdout.strip() == lines[4]
    assert not [p for p in tmp_path.iterdir() if p.name != 'slurm']  # nothing trained


@pytest.mark.parametrize('args,message', [
    (['--vary', 'a=1', '--seeds', 'x'], '--seeds x'),
    (['--vary', 'a=1', '--budget', 'steps'], 'allowed: tokens, flops, time'),
    (['--vary', 'a=1', '--budget', 'time'], 'needs --max_time'),
    (['--vary', 'a=1', '--jobs', '0'], '--jobs 0'),
    (['--vary', 'a=1', '--emit', 'pbs'], 'allowed: slurm'),
    (['--max_iters=4'], 'nothing to ablate'),
])
def test_bad_arguments(args, message):
    result = run('bench/ablate.py', *args)
    assert result.returncode == 2 and message in result.stderr


def test_time_budget_stops_every_run_at_max_time(sweep, tmp_path):
    _, data, _, _ = sweep
    result = run('bench/ablate.py', f'--data_dir={data}', *TINY_MODEL, '--max_iters=100000', '--eval_interval=100000',
                 '--max_time=1', '--vary', 'ffn_type=standard', '--budget', 'time', '--jobs', '2',
                 f'--out_root={tmp_path}')
    assert result.returncode == 0, result.stdout + result.stderr
    for variant in ('baseline', 'ffn_type=standard'):
        [log] = run_logs(tmp_path / variant)  # one seed: the single-run layout
        assert log['summary']['stop_reason'] == 'max_time' and 0 < log['summary']['iterations'] < 100000
    assert 'equal wall time' in (tmp_path / 'comparison.md').read_text()


def planned(runs, key):
    """{variant: the value of --key its train.py gets (the last one wins), or None}."""
    return {r['variant']: next((a.split('=', 1)[1] for a in reversed(r['argv']) if a.startswith(f'--{key}=')), None)
            for r in runs}


def test_budgets_scale_the_schedule_to_equal_tokens_or_flops(monkeypatch, tmp_path, capsys):
    # what the one-step probe of train.py reports: 4 x 16 tokens an iteration, a schedule of 100 iterations
    per_iter = {'batch_size': lambda v: 16 * int(v), 'block_size': lambda v: 4 * int(v),
                'gradient_accumulation_steps': lambda v: 64 * int(v)}
    schedule = {'max_iters': 100, 'lr_decay_iters': 100, 'warmup_iters': 10}

    def probe(configs, common, changes, cache_path):
        tokens = next((per_iter[k](v) for k, v in changes.items() if k in per_iter), 64)
        flops = tokens * (2.0 if changes.get('ffn_type') == 'swiglu' else 1.0)
        return {'flops_per_iter': flops, 'tokens_per_iter': tokens, 'config': dict(schedule)}
    monkeypatch.setattr(ablate, 'probe', probe)

    def plan(budget, *variants):
        args = {'configs': [], 'common': [f'--{k}={v}' for k, v in schedule.items() if v is not None],
                'budget': budget, 'seeds': [None], 'out_root': str(tmp_path),
                'variants': [{'name': f'{k}={v}', k: v} for k, v in variants]}
        runs = ablate.plan(args)[1]
        return {key: planned(runs, key) for key in ('max_iters', 'lr_decay_iters', 'warmup_iters')}

    # equal tokens: twice the tokens an iteration, half the iterations, warmup and decay with them
    got = plan('tokens', ('batch_size', '8'), ('block_size', '8'), ('gradient_accumulation_steps', '3'),
               ('ffn_type', 'swiglu'))
    assert got['max_iters'] == {'baseline': '100', 'batch_size=8': '50', 'block_size=8': '200',
                                'gradient_accumulation_steps=3': '33', 'ffn_type=swiglu': '100'}
    assert got['lr_decay_iters'] == got['max_iters']
    assert got['warmup_iters'] == {'baseline': '10', 'batch_size=8': '5', 'block_size=8': '20',
                                   'gradient_accumulation_steps=3': '3', 'ffn_type=swiglu': '10'}
    # equal FLOPs: twice the FLOPs an iteration, half the iterations and half the warmup
    got = plan('flops', ('ffn_type', 'swiglu'))
    assert got['max_iters']['ffn_type=swiglu'] == '50' and got['warmup_iters']['ffn_type=swiglu'] == '5'
    schedule['lr_decay_iters'] = None  # train.py's default: the decay ends with the run, whatever its length
    assert plan('flops', ('ffn_type', 'swiglu'))['lr_decay_iters'] == {'baseline': None, 'ffn_type=swiglu': None}
    # no variant changes the tokens of an iteration: nothing to probe, the config's schedule for all
    monkeypatch.setattr(ablate, 'probe', None)
    assert plan('tokens', ('ffn_type', 'swiglu'))['max_iters'] == {'baseline': '100', 'ffn_type=swiglu': '100'}
    # a variant whose probe fails is not run without its budget (a transient failure, a bad setting): it is failed
    monkeypatch.setattr(ablate, 'probe', lambda configs, common, changes, cache_path: 'boom' if changes else
                        {'flops_per_iter': 1.0, 'tokens_per_iter': 64, 'config': dict(schedule)})
    runs = ablate.plan({'configs': [], 'common': [], 'budget': 'flops', 'seeds': [1, 2], 'out_root': str(tmp_path),
                        'variants': [{'name': 'ffn_type=swiglu', 'ffn_type': 'swiglu'}]})[1]
    assert [r.get('error') for r in runs] == [None, 'not run: its one-step probe of train.py failed: boom'] * 2
    records = ablate.run_sweep([r for r in runs if 'error' in r], jobs=1)
    assert records == [{'error': 'not run: its one-step probe of train.py failed: boom'}] * 2
    assert 'ffn_type=swiglu seed 2: FAILED (not run' in capsys.readouterr().out
    assert not os.path.exists(runs[1]['out_dir'])
    # a variant's own max_iters would break the budget
    for budget in ('tokens', 'flops'):
        with pytest.raises(SystemExit):
            plan(budget, ('max_iters', '200'))
        assert 'variant max_iters=200 sets max_iters' in capsys.readouterr().err


def test_jobs_get_a_gpu_each_or_a_share_of_the_cores(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    assert [s['CUDA_VISIBLE_DEVICES'] for s in ablate.resources(6)] == ['0', '1', '2', '3', '0', '1']
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    monkeypatch.setattr(os, 'cpu_count', lambda: 16)
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    assert ablate.resources(4) == [{'OMP_NUM_THREADS': '4', 'MKL_NUM_THREADS': '4'}] * 4
    assert ablate.resources(32)[0]['OMP_NUM_THREADS'] == '1'
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # set by the user: kept
    assert ablate.resources(2) == [{'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}] * 2


def test_an_exported_thread_count_caps_the_jobs_and_never_oversubscribes(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    monkeypatch.setattr(os, 'cpu_count', lambda: 16)
    monkeypatch.setenv('OMP_NUM_THREADS', '16')  # a SLURM job script's export for the whole node
    assert ablate.resources(4)[0]['OMP_NUM_THREADS'] == '4'
    monkeypatch.setenv('OMP_NUM_THREADS', 'lots')
    assert ablate.resources(4)[0]['OMP_NUM_THREADS'] == '4'

"""bench/scaling.py and its report: fits on synthetic runs with known laws (the exponent and E recovered, a constant
difference reported as constant, a growing one as growing, noise as unknown), the plan of sizes and budgets, and one
real sweep through train.py."""
import json
import os
import shlex
import sys

import numpy as np
import pytest

from helpers import ROOT, TINY_MODEL, make_char_dataset, run, run_logs

sys.path.insert(0, os.path.join(ROOT, 'bench'))
import ablate  # noqa: E402
import scaling  # noqa: E402
import scaling_report as report  # noqa: E402
from scaling_coverage import baseline_law, synthetic_runs  # noqa: E402  (known laws, seed noise)

COMPUTE = np.geomspace(1e12, 1e14, 5)


def analyse(laws, compute=COMPUTE, seeds=(1, 2, 3), noise=0.003, form='power'):
    sizes = [f'size{k}' for k in range(len(compute))]
    return report.analyse(sizes, list(laws), synthetic_runs(laws, compute, seeds, noise), form, resamples=300)


# ---- fits on known laws ----

def test_the_power_fit_recovers_alpha_and_e():
    pytest.importorskip('scipy')
    c = np.repeat(np.geomspace(1e12, 1e15, 6), 3)
    exact = report.fit_power(c, baseline_law(c))
    assert exact['alpha'] == pytest.approx(0.3, abs=1e-4) and exact['E'] == pytest.approx(1.2, abs=1e-4)
    assert exact['A'] == pytest.approx(7.2e3, rel=1e-2)
    noisy = report.fit_power(c, baseline_law(c) + np.random.default_rng(0).normal(0, 0.003, c.size))
    assert noisy['alpha'] == pytest.approx(0.3, abs=0.03) and noisy['E'] == pytest.approx(1.2, abs=0.05)
    # a pure power law (E = 0) is found at E's bound, with its exponent
    assert report.fit_power(c, 40 * c ** -0.1) == pytest.approx({'E': 0.0, 'A': 40.0, 'alpha': 0.1}, rel=1e-3, abs=1e-6)
    line = report.fit_loglinear([1e12, 1e13, 1e14], [3.0, 2.8, 2.6])
    assert line == pytest.approx({'a': 5.4, 'b': -0.2})


def test_a_constant_difference_is_reported_as_constant():
    pytest.importorskip('scipy')
    laws = {'baseline': baseline_law, 'rope': lambda c: baseline_law(c) - 0.02}
    result = analyse(laws)
    assert result['verdicts']['rope']['kind'] == 'holds'
    assert result['estimate']['rope|alpha'] == pytest.approx(0.3, abs=0.02)
    assert result['estimate']['rope|difference'] == pytest.approx([-0.02] * 3, abs=0.005)
    sentence = result['verdicts']['rope']['sentence']
    assert sentence.startswith("rope's gain over the baseline holds with compute: -0.0")
    assert 'no change with compute beyond seed noise' in sentence and 'at 1.0e16' in sentence
    # three sizes: the log-linear form, under which a constant difference is a shared slope
    three = analyse(laws, compute=COMPUTE[::2], form='loglinear')
    assert three['verdicts']['rope']['kind'] == 'holds'
    assert three['estimate']['rope|trend'] == pytest.approx(0.0, abs=0.005)


def test_a_growing_and_a_shrinking_difference():
    pytest.importorskip('scipy')
    # lower E and larger A: no better at 1e12, ahead by 0.06 at 1e14 and by 0.09 at 1e16
    laws = {'baseline': baseline_law, 'swiglu': lambda c: 1.10 + 7.8e3 * c ** -0.3,
            'post_norm': lambda c: baseline_law(c) - 0.1 * (1e12 / c) ** 0.2}
    result = analyse(laws)
    assert result['verdicts']['swiglu']['kind'] == 'grows'
    assert result['estimate']['swiglu|difference'][-1] == pytest.approx(-0.0912, abs=0.005)
    assert result['verdicts']['swiglu']['sentence'].startswith("swiglu's gain over the baseline grows with compute")
    assert result['verdicts']['post_norm']['kind'] == 'shrinks'  # a gain fading towards zero: -0.016 at 1e16
    low, high = result['intervals']['post_norm|difference']
    assert low[-1] < -0.1 * 1e-4 ** 0.2 < high[-1] < 0
    low, high = result['intervals']['swiglu|difference']
    assert low[-1] < result['estimate']['swiglu|difference'][-1] < high[-1] < 0


def test_noise_gives_wide_intervals_and_says_it_cannot_tell():
    pytest.importorskip('scipy')
    laws = {'baseline': baseline_law, 'rmsnorm': lambda c: baseline_law(c) - 0.01}
    result = analyse(laws, noise=0.08)
    assert result['verdicts']['rmsnorm']['kind'] == 'cannot_tell'
    low, high = result['intervals']['rmsnorm|difference']
    assert high[-1] - low[-1] > 0.05 and low[-1] < 0 < high[-1]
    assert result['verdicts']['rmsnorm']['sentence'].startswith(
        'the data cannot tell whether rmsnorm beats the baseline at 100x the largest compute')
    quiet = analyse(laws, noise=0.002)
    quiet_low, quiet_high = quiet['intervals']['rmsnorm|difference']
    assert quiet_high[-1] - quiet_low[-1] < (high[-1] - low[-1]) / 5


def test_a_fit_that_misses_a_measured_difference_says_so():
    pytest.importorskip('scipy')
    # a gain of 0.11, 0.23, 0.12 at three sizes: no line in log C passes near all three
    gain = dict(zip(COMPUTE[::2], (0.11, 0.23, 0.12)))
    laws = {'baseline': baseline_law, 'rope': lambda c: baseline_law(c) - gain[c]}
    result = analyse(laws, compute=COMPUTE[::2], form='loglinear')
    assert result['verdicts']['rope']['misfits'] == ['size0', 'size1', 'size2']
    assert 'but the fit misses the measured difference at size0 (fitted' in result['verdicts']['rope']['sentence']
    assert analyse({**laws, 'rope': lambda c: baseline_law(c) - 0.02})['verdicts']['rope']['misfits'] == []


def test_one_seed_has_no_intervals_and_failed_runs_leave_their_seed_out(tmp_path):
    pytest.importorskip('scipy')
    laws = {'baseline': baseline_law, 'rope': lambda c: baseline_law(c) - 0.02}
    one = analyse(laws, seeds=(None,))
    assert one['intervals'] is None and one['verdicts']['rope']['kind'] == 'no_interval'
    assert 'the data cannot tell how much of it is seed noise' in one['verdicts']['rope']['sentence']
    runs = synthetic_runs(laws, COMPUTE, (1, 2, 3), 0.003)
    runs[('size4', 'rope', 3)] = {'error': 'exit status 1: boom'}
    sizes = [f'size{k}' for k in range(5)]
    assert list(report.paired_points(sizes, list(laws), runs)['size4']) == [1, 2]
    setup = {'seeds': [1, 2, 3], 'budget': 'flops', 'tokens_per_param': 20.0, 'fit': 'power', 'fit_reason': 'why',
             'parameters': {s: 1e5 for s in sizes}}
    path, text = report.write(str(tmp_path), 'Scaling of synthetic runs', setup, sizes, list(laws), runs, 'json',
                              resamples=200)
    record = json.loads(text)
    assert path.endswith('scaling.json') and record['answer'].startswith("rope's gain over the baseline holds")
    assert record['rows']['size4'][1]['failed'] == [3] and len(record['intervals']['rope|band'][0]) == len(record['grid'])


# ---- the plan ----

def test_each_size_trains_tokens_per_parameter_and_variants_match_its_flops(monkeypatch, tmp_path):
    def probe(configs, common, changes, cache_path):
        size = {a.split('=')[0][2:]: int(a.split('=')[1]) for a in common if a.startswith(('--n_layer=', '--n_embd='))}
        parameters = 12 * size['n_layer'] * size['n_embd'] ** 2
        cost = 1.5 if changes.get('ffn_type') == 'swiglu' else 1.0
        return {'parameters': parameters, 'tokens_per_iter': 64, 'flops_per_iter': 6 * parameters * 64 * cost,
                'config': {'max_iters': 100, 'warmup_iters': 10, 'lr_decay_iters': 100}}
    monkeypatch.setattr(ablate, 'probe', probe)
    args = scaling.parse(['--sizes', '1x32', '2x64', '4x128x4', '--vary', 'ffn_type=swiglu', '--seeds', '2',
                          '--tokens_per_param', '1', f'--out_root={tmp_path}'])
    assert args['budget'] == 'flops' and args['fit'] == 'loglinear'  # the defaults: compute-matched, 3 sizes
    sizes, variants, runs = scaling.plan(args)
    assert variants == ['baseline', 'ffn_type=swiglu']
    assert [(s['name'], s['parameters'], s['max_iters']) for s in sizes] == [
        ('1x32', 12288, 192), ('2x64', 98304, 1536), ('4x128x4', 786432, 12288)]  # parameters / 64 tokens

    def setting(run, key):
        return next((a.split('=', 1)[1] for a in reversed(run['argv']) if a.startswith(f'--{key}=')), None)
    by = {(r['size'], r['variant'], r['seed']): r for r in runs}
    base, swiglu = by[('2x64', 'baseline', 1)], by[('2x64', 'ffn_type=swiglu', 1)]
    assert [setting(base, k) for k in ('n_layer', 'n_embd', 'n_head', 'max_iters', 'warmup_iters', 'lr_decay_iters')] \
        == ['2', '64', None, '1536', '154', '1536']  # warmup and decay keep their share of the config's run
    assert setting(swiglu, 'max_iters') == '1024' and setting(by[('4x128x4', 'baseline', 2)], 'n_head') == '4'
    assert base['out_dir'] == os.path.join(str(tmp_path), '2x64', 'baseline', 'seed1')
    assert [(r['seed'], r['size']) for r in runs][:6:2] == [(1, '1x32'), (1, '2x64'), (1, '4x128x4')]  # seed by seed
    assert scaling.parse(['--sizes', '1x8', '2x8', '3x8', '4x8', '--vary', 'a=1'])['fit'] == 'power'


@pytest.mark.parametrize('args,message', [
    (['--sizes', '2x64', '4x128'], 'give 3 or more sizes'),
    (['--sizes', '2x64', '3by96', '4x128'], '--sizes 3by96: expected LxD or LxDxH'),
    (['--sizes', '2x64', '2x64', '4x128'], 'each size once'),
    (['--sizes', '1x8', '2x8', '3x8', '--budget', 'time'], 'allowed: flops, tokens'),
    (['--sizes', '1x8', '2x8', '3x8', '--fit', 'cubic'], 'allowed: auto, power, loglinear'),
    (['--sizes', '1x8', '2x8', '3x8', '--tokens_per_param', '0'], '--tokens_per_param 0: expected a positive number'),
    (['--sizes', '1x8', '2x8', '3x8', '--max_iters=50'], '--max_iters given: scaling.py sets max_iters per size'),
    (['--sizes', '1x8', '2x8', '3x8', '--vary', 'n_layer=3'], 'variant n_layer=3 sets n_layer'),
])
def test_bad_arguments(args, message):
    result = run('bench/scaling.py', *(args if '--vary' in args else args + ['--vary', 'a=1']))
    assert result.returncode == 2 and message in result.stderr, result.stderr


# ---- one real sweep ----

def test_a_small_sweep_through_train_py(tmp_path):
    """3 sizes x 2 variants of a tiny model, one seed (the synthetic tests above cover seeds), two runs at a time;
    then the report again as JSON, the SLURM scripts and the dry run, all from the probes already made."""
    pytest.importorskip('scipy')
    data = make_char_dataset(tmp_path / 'data')
    out = tmp_path / 'scaling'
    model = [a for a in TINY_MODEL if not a.startswith(('--n_layer=', '--n_embd='))]  # the sizes set them
    args = [f'--data_dir={data}', *model, '--eval_interval=1000', '--log_interval=5', '--sizes', '1x16', '1x32',
            '2x32', '--tokens_per_param', '0.05', '--vary', 'ffn_type=standard', '--budget', 'tokens',
            '--jobs', '2', f'--out_root={out}']
    result = run('bench/scaling.py', *args, in_process=False)
    assert result.returncode == 0, result.stdout + result.stderr
    probes = {}
    for size in ('1x16', '1x32', '2x32'):
        [probe] = json.loads((out / size / 'probes.json').read_text()).values()  # the baseline only: equal tokens
        probes[size] = probe
        logs = {v: run_logs(out / size / v)[0] for v in ('baseline', 'ffn_type=standard')}  # one seed: no seed folder
        iterations = round(0.05 * probe['parameters'] / probe['tokens_per_iter'])
        assert {log['summary']['iterations'] for log in logs.values()} == {iterations}
        assert logs['baseline']['startup_info']['parameters']['total'] == probe['parameters']
    assert probes['1x16']['parameters'] < probes['1x32']['parameters'] < probes['2x32']['parameters']
    text = (out / 'scaling.md').read_text()
    assert text.startswith('# Scaling of the defaults\n\n**Answer:** ') and 'ffn_type=standard' in text.split('\n')[2]
    assert '| 2x32 | ffn_type=standard | 1 |' in text and 'L(C) = a + b·log10(C)' in text
    assert 'one seed: the data cannot tell how much of it is seed noise' in text
    again = run('bench/scaling.py', *args, '--report', '--format', 'json')
    assert again.returncode == 0, again.stderr
    record = json.loads((out / 'scaling.json').read_text())
    flops = {(r['size'], r['variant'], r['seed']): r['train_flops'] for r in record['runs']}
    log = run_logs(out / '2x32' / 'baseline')[0]  # FLOPs as the run log counts them
    assert flops[('2x32', 'baseline', None)] == log['summary']['iterations'] * \
        log['startup_info']['training']['tokens_per_iter'] * log['startup_info']['performance']['flops_per_token']
    assert record['setup']['fit'] == 'loglinear' and set(record['verdicts']) == {'ffn_type=standard'}
    slurm = run('bench/scaling.py', *args, '--emit', 'slurm')
    assert slurm.returncode == 0 and len((out / 'slurm' / 'runs.txt').read_text().splitlines()) == 6
    report_line = (out / 'slurm' / 'report.sbatch').read_text().strip().splitlines()[-1]
    assert 'bench/scaling.py' in report_line and shlex.split(report_line)[-1] == '--report'
    assert '--emit' not in report_line
    dry = run('bench/scaling.py', *args, '--dry_run')
    assert len(dry.stdout.splitlines()) == 6 and '--n_layer=2' in dry.stdout
    pytest.importorskip('matplotlib')
    assert (out / 'scaling.png').stat().st_size > 10_000

import csv
import json
import os
import sys

import pytest

from helpers import ROOT, TINY_MODEL, make_char_dataset, run, run_logs, train
from model import GPT, GPTConfig

sys.path.insert(0, os.path.join(ROOT, 'bench'))
import compare  # noqa: E402


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_char_dataset(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory, data):
    root = tmp_path_factory.mktemp('runs')
    train(data, root / 'llama', '--max_iters=6', '--log_interval=2', '--eval_interval=3', '--grad_stats_interval=4',
          '--grad_clip=100')
    train(data, root / 'gpt2', '--max_iters=6', '--log_interval=2', '--eval_interval=3', '--arch_preset=gpt2',
          '--grad_clip=1e-6')
    return root


def test_monitoring_fields_are_present_and_sane(two_runs):
    log = run_logs(two_runs / 'llama')[0]
    entries = log['training_iterations']
    for e in entries:
        assert e['grad_norm'] > 0 and e['grad_clipped'] is False  # grad_clip 100 is far above these norms
        assert e['grad_std'] > 0 and e['grad_non_finite'] == 0 and abs(e['grad_mean']) < e['grad_std']
        assert e['memory_allocated_mb'] > 10 and e['memory_peak_mb'] >= e['memory_allocated_mb'] * 0.5
        assert e['loss_variance'] >= 0 and e['lr'] > 0
    # per-layer statistics only at multiples of grad_stats_interval
    with_layers = [e for e in entries if 'grad_norm_per_layer' in e]
    assert [e['iter'] for e in with_layers] == [4]
    layers = with_layers[0]['grad_norm_per_layer']
    assert {'embedding', 'head', 'norm', 'layer0.attn', 'layer0.ffn', 'layer1.norm'} <= set(layers)
    total = sum(v ** 2 for v in layers.values()) ** 0.5
    assert total == pytest.approx(with_layers[0]['grad_norm'], rel=1e-4)  # the groups partition the parameters
    ratios = with_layers[0]['update_to_weight']
    assert set(ratios) == set(layers) and all(0 < r < 1 for r in ratios.values())
    clipped = run_logs(two_runs / 'gpt2')[0]['training_iterations']
    assert all(e['grad_clipped'] for e in clipped)
    with open(two_runs / 'llama' / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert rows[0]['iter'] == '0' and rows[0]['val_loss'] and not rows[0]['loss']  # an evaluation's row
    rows = [r for r in rows if r['loss']]  # a log line's rows
    assert {'grad_norm', 'grad_clipped', 'memory_allocated_mb', 'loss_variance', 'mfu'} <= set(rows[0])
    assert float(rows[0]['grad_norm']) == pytest.approx(entries[0]['grad_norm'])


def test_moe_expert_fractions_sum_to_one(data, tmp_path):
    train(data, tmp_path / 'o', '--arch_preset=moe', '--n_kv_head=1', '--max_iters=2', '--log_interval=1',
          '--eval_interval=2')
    for e in run_logs(tmp_path / 'o')[0]['training_iterations']:
        assert len(e['expert_fractions']) == 2  # one row per layer
        for row in e['expert_fractions']:
            assert len(row) == 8 and sum(row) == pytest.approx(1.0)
        assert e['aux_loss'] >= 0.99


def test_startup_report_and_reproducibility(data, tmp_path):
    r = train(data, tmp_path / 'o', '--max_iters=1', '--eval_iters=0', '--seed=5')
    info = run_logs(tmp_path / 'o')[0]['startup_info']
    model = GPT(GPTConfig(**info['model_args']))
    total, non_embedding = model.get_num_params(False), model.get_num_params()
    assert f"{total:,} total, {total:,} trainable, {non_embedding:,} non-embedding" in r.stdout
    for heading in ('Model architecture', 'Training configuration', 'Hardware', 'Theoretical performance'):
        assert heading in r.stdout
    assert 'layers / heads / kv  2 / 2 / 2' in r.stdout and 'effective batch      4 sequences, 64 tokens' in r.stdout
    assert info['model'] == {'n_layer': 2, 'n_head': 2, 'n_kv_head': 2, 'n_embd': 32, 'ffn_hidden': 256,
                             'block_size': 16, 'vocab_size': 12}
    assert len(info['git_commit']) == 40 and isinstance(info['git_dirty'], bool)
    assert set(info['versions']) >= {'python', 'torch', 'cuda', 'numpy', 'tiktoken', 'sentencepiece'}
    assert info['versions']['numpy'] and info['versions']['sentencepiece'] and info['devices']
    assert info['seed'] == 5 and 'train.py' in info['command']
    assert info['dataset']['source_sha256'] and run_logs(tmp_path / 'o')[0]['config']['seed'] == 5


def test_profile_writes_a_chrome_trace(data, tmp_path):
    train(data, tmp_path / 'o', '--max_iters=6', '--eval_iters=0', '--profile=True')
    with open(tmp_path / 'o' / 'profile_trace_rank0.json') as f:
        trace = json.load(f)
    assert any('aten::mm' in e.get('name', '') for e in trace['traceEvents'])


def test_compare_table_and_plots(two_runs, tmp_path):
    pytest.importorskip('matplotlib')
    out = tmp_path / 'cmp'
    assert compare.main([str(two_runs / 'llama'), str(two_runs / 'gpt2'), '--out', str(out)]) == 0
    table = (out / 'comparison.md').read_text().splitlines()
    assert table[0].startswith('| run | architecture | parameters | flops_per_token | best_val_loss')
    assert table[2].startswith('| llama | 2L-2H-32D-RoPE') and table[3].startswith('| gpt2 | 2L-2H-32D-AbsPos')
    import matplotlib.image
    for name in ('loss_vs_iteration.png', 'loss_vs_tokens.png', 'loss_vs_time.png', 'throughput.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
    compare.main(['--latest', '2', '--root', str(two_runs), '--format', 'json', '--out', str(out)])
    rows = json.loads((out / 'comparison.json').read_text())
    assert sorted(r['run'] for r in rows) == ['gpt2', 'llama']
    for r in rows:
        log = run_logs(two_runs / r['run'])[0]
        assert r['best_val_loss'] == min(e['val_loss'] for e in log['eval_steps'])
        assert r['final_train_loss'] == log['training_iterations'][-1]['loss'] and r['tokens_per_sec'] > 0
    compare.main([str(two_runs / 'llama'), '--format', 'csv', '--out', str(out)])
    assert (out / 'comparison.csv').read_text().startswith('run,architecture,parameters')


def test_compare_without_matplotlib(two_runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import fails as if not installed
    assert compare.main([str(two_runs / 'llama'), '--out', str(tmp_path)]) == 0
    assert 'matplotlib is not installed: tables only' in capsys.readouterr().out
    assert os.listdir(tmp_path) == ['comparison.md']


def test_compare_bad_input(tmp_path):
    r = run('bench/compare.py', str(tmp_path / 'nope'))
    assert r.returncode == 2 and 'is not a folder' in r.stderr

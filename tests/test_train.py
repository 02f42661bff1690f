import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import (ROOT, SHARED, TINY_MODEL, assert_optimizer_follows, iteration_losses, make_char_dataset,
                     make_sharded_dataset, run, run_logs, train)
from model import GPT, GPTConfig


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_char_dataset(tmp_path_factory.mktemp('data'))


def test_overfits_a_few_hundred_tokens(tmp_path):
    pattern = 'the quick brown fox jumps over the lazy dog. ' * 8  # ~360 characters, memorisable
    data_dir = make_char_dataset(tmp_path / 'd', text=pattern * 2)
    train(data_dir, tmp_path / 'o', '--max_iters=40', '--learning_rate=1e-2', '--warmup_iters=5',
          '--log_interval=1', '--eval_interval=1000', '--n_embd=64')
    losses = iteration_losses(tmp_path / 'o')
    assert losses[40] < 0.5 * losses[1], losses


@pytest.fixture(scope='module')
def sharded(tmp_path_factory):
    return make_sharded_dataset(tmp_path_factory.mktemp('sharded'))


@pytest.mark.parametrize('dataset', ['data', 'sharded'])
def test_exact_resume_is_bit_identical(dataset, request, tmp_path):
    # dropout and gradient accumulation make the RNG and micro-step order part of what must be restored;
    # the sharded corpus samples by epoch (every window once), the single-file one at random
    data = request.getfixturevalue(dataset)
    common = ['--log_interval=1', '--eval_interval=3', '--dropout=0.1', '--gradient_accumulation_steps=2',
              '--warmup_iters=2', '--lr_decay_iters=8']  # the schedule must not depend on max_iters
    train(data, tmp_path / 'straight', '--max_iters=8', *common)
    train(data, tmp_path / 'split', '--max_iters=4', *common)
    resumed = train(data, tmp_path / 'split', '--max_iters=8', '--init_from=resume', *common)
    assert 'resuming from' in resumed.stdout and 'ckpt_4.pt' in resumed.stdout
    straight, split = iteration_losses(tmp_path / 'straight'), iteration_losses(tmp_path / 'split')
    assert sorted(straight) == list(range(1, 9))
    assert straight == split  # exact float equality at every iteration
    # and the final weights agree bit for bit
    a = torch.load(tmp_path / 'straight' / 'ckpt_8.pt', weights_only=True)['model']
    b = torch.load(tmp_path / 'split' / 'ckpt_8.pt', weights_only=True)['model']
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = run_logs(tmp_path / 'straight')[0]
    assert log['startup_info']['dataset']['sampling'] == ('epoch' if dataset == 'sharded' else 'random')
    assert log['training_iterations'][-1]['epoch'] > log['training_iterations'][0]['epoch'] > 0


@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_resume_takes_the_new_learning_rate_weight_decay_and_betas(data, tmp_path, optimizer):
    # the optimizer's saved param groups must not win over the command line of the resumed run
    common = ['--log_interval=1', '--eval_interval=4', '--warmup_iters=2', '--lr_decay_iters=6', f'--optimizer={optimizer}']
    train(data, tmp_path / 'o', '--max_iters=4', *common)
    new = ['--learning_rate=3e-4', '--min_lr=3e-5', '--weight_decay=0.05', '--beta1=0.8', '--beta2=0.99']
    train(data, tmp_path / 'o', '--max_iters=6', '--init_from=resume', *common, *new)
    last = run_logs(tmp_path / 'o')[-1]['training_iterations'][-1]
    assert last['iter'] == 6
    groups = torch.load(tmp_path / 'o' / 'ckpt_6.pt', weights_only=True)['optimizer']['param_groups']
    assert_optimizer_follows(groups, 3e-4, last['lr'], 0.05, (0.8, 0.99))


def test_logged_loss_is_mean_over_micro_steps(data, tmp_path):
    # learning_rate 0 freezes the model, so the first iteration's loss can be recomputed here
    train(data, tmp_path / 'o', '--max_iters=1', '--learning_rate=0', '--gradient_accumulation_steps=3',
          '--log_interval=1', '--eval_interval=1', '--seed=7')
    ckpt = torch.load(tmp_path / 'o' / 'ckpt_1.pt', weights_only=True)
    model = GPT(GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    tokens = np.memmap(os.path.join(data, 'train.bin'), dtype=np.uint16, mode='r')
    losses = []
    for micro in range(3):
        starts = np.random.default_rng([7, 0, 0, micro]).integers(0, len(tokens) - 16, size=4)  # last start included
        x = torch.tensor(np.stack([tokens[i:i + 16] for i in starts]).astype(np.int64))
        y = torch.tensor(np.stack([tokens[i + 1:i + 17] for i in starts]).astype(np.int64))
        losses.append(model(x, y)[1].item())
    logged = iteration_losses(tmp_path / 'o')[1]
    assert logged == pytest.approx(sum(losses) / 3, abs=1e-6)
    assert logged != pytest.approx(losses[-1], abs=1e-6)


def test_run_log_schema_csv_and_rotation(tmp_path):
    out = tmp_path / 'o'  # learnable text and a brisk learning rate: the val loss improves, so best.pt is written
    data = make_char_dataset(tmp_path / 'd', text='the quick brown fox jumps over the lazy dog. ' * 80)
    train(data, out, '--max_iters=10', '--log_interval=2', '--eval_interval=2', '--keep_last_n=2', '--learning_rate=1e-2')
    [log] = run_logs(out)
    assert set(log) >= {'run_name', 'start_time', 'config', 'startup_info', 'training_iterations', 'eval_steps',
                        'checkpoints', 'summary'}
    info = log['startup_info']
    assert info['architecture'] == '2L-2H-32D-RoPE-RMS-NB-SwiGLU-PreNorm-Untied'
    model = GPT(GPTConfig(**info['model_args']))
    assert info['parameters'] == {'total': model.get_num_params(False), 'trainable': model.get_num_params(False),
                                  'non_embedding': model.get_num_params()}
    assert info['versions']['torch'] == torch.__version__
    assert log['config']['max_iters'] == 10 and log['config']['n_layer'] == 2
    iters = log['training_iterations']
    assert [e['iter'] for e in iters] == [2, 4, 6, 8, 10]
    for e in iters:
        assert set(e) >= {'iter', 'loss', 'lr', 'time_ms', 'tokens_per_sec'} and e['tokens_per_sec'] > 0
    assert [e['iter'] for e in log['eval_steps']] == [0, 2, 4, 6, 8, 10]
    assert all({'train_loss', 'val_loss'} <= set(e) for e in log['eval_steps'])
    s = log['summary']
    assert s['stop_reason'] == 'max_iters' and s['tokens_seen'] == 10 * 4 * 16
    assert s['best_val_loss'] == min(e['val_loss'] for e in log['eval_steps'])
    with open(out / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(int(r['iter']), float(r['val_loss'])) for r in rows if r['val_loss']] == \
        [(e['iter'], pytest.approx(e['val_loss'])) for e in log['eval_steps']]  # a row per evaluation
    rows = [r for r in rows if r['loss']]  # and one per log line
    assert [int(r['iter']) for r in rows] == [e['iter'] for e in iters]
    assert [float(r['loss']) for r in rows] == pytest.approx([e['loss'] for e in iters])
    ckpts = sorted(n for n in os.listdir(out) if n.startswith('ckpt_'))
    assert ckpts == ['ckpt_10.pt', 'ckpt_8.pt'] and (out / 'best.pt').exists()
    assert not [n for n in os.listdir(out) if n.endswith('.tmp')]
    ck = torch.load(out / 'ckpt_10.pt', weights_only=True)
    assert {'model', 'model_args', 'optimizer', 'iter_num', 'best_val_loss', 'config', 'seed', 'meta'} <= set(ck)
    assert ck['iter_num'] == 10 and not any(k.startswith('_orig_mod.') for k in ck['model'])


def test_eval_at_start_false_evaluates_only_after_training_steps(data, tmp_path):
    # a time-to-loss run (the CPU speedrun) spends nothing on an evaluation before its first step
    train(data, tmp_path / 'o', '--max_iters=5', '--log_interval=5', '--eval_interval=2', '--eval_at_start=False')
    [log] = run_logs(tmp_path / 'o')
    assert [e['iter'] for e in log['eval_steps']] == [2, 4, 5]


def test_truncated_checkpoint_is_skipped_on_resume(data, tmp_path):
    out = tmp_path / 'o'
    train(data, out, '--max_iters=6', '--eval_interval=3')
    with open(out / 'ckpt_6.pt', 'r+b') as f:
        f.truncate(1000)  # as if the machine died mid-write without the atomic rename
    result = train(data, out, '--max_iters=8', '--eval_interval=3', '--init_from=resume')
    assert 'skipping unreadable checkpoint' in result.stderr and 'ckpt_3.pt' in result.stdout


def test_sample_is_deterministic_and_eval_only_reports(data, tmp_path):
    out = tmp_path / 'o'
    train(data, out, '--max_iters=4', '--eval_interval=4')
    args = [f'--out_dir={out}', '--num_samples=2', '--max_new_tokens=30', '--start=abc', '--top_k=5', '--top_p=0.9']
    a, b = run('sample.py', *args, '--seed=1'), run('sample.py', *args, '--seed=1')
    c = run('sample.py', *args, '--seed=2')
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout != c.stdout and a.stdout.startswith('abc')
    e = train(data, out, '--eval_only=True')
    for split in ('train', 'val'):
        assert f'{split}: loss' in e.stdout and 'perplexity' in e.stdout and 'bits/byte' in e.stdout
    log = run_logs(out)[-1]
    val = log['eval_steps'][0]['eval']['val']
    assert val['perplexity'] == pytest.approx(math.exp(val['loss']))
    meta = json.load(open(os.path.join(data, 'meta.json')))
    assert val['bits_per_byte'] == pytest.approx(val['loss'] / math.log(2) * meta['val_tokens'] / meta['val_bytes'])
    assert log['summary']['stop_reason'] == 'eval_only'


@pytest.mark.parametrize('schedule', ['cosine', 'linear', 'wsd'])
def test_lr_schedules(data, tmp_path, schedule):
    train(data, tmp_path / 'o', '--max_iters=20', '--log_interval=1', '--eval_interval=100', '--warmup_iters=4',
          '--learning_rate=1e-3', '--min_lr=1e-4', f'--lr_schedule={schedule}', '--wsd_decay_frac=0.25')
    lrs = {e['iter'] - 1: e['lr'] for e in run_logs(tmp_path / 'o')[0]['training_iterations']}  # lr used at iter-1
    assert lrs[0] == pytest.approx(1e-3 / 5) and lrs[3] == pytest.approx(1e-3 * 4 / 5)
    assert lrs[19] > 1e-4 and lrs[19] < lrs[10]
    if schedule == 'cosine':
        assert lrs[12] == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 8 / 16)) * 9e-4)
    if schedule == 'linear':
        assert lrs[12] == pytest.approx(1e-3 - 9e-4 * 8 / 16)
    if schedule == 'wsd':
        assert lrs[4] == lrs[14] == pytest.approx(1e-3)  # stable until the last 25%
        assert lrs[17] == pytest.approx(1e-4 + 9e-4 * 3 / 5)


def test_guard_rails_max_time_target_and_non_finite(data, tmp_path):
    r = train(data, tmp_path / 'a', '--max_iters=100000', '--max_time=1', '--eval_interval=100000')
    assert run_logs(tmp_path / 'a')[0]['summary']['stop_reason'] == 'max_time'
    assert any(n.startswith('ckpt_') for n in os.listdir(tmp_path / 'a'))
    r = train(data, tmp_path / 'b', '--max_iters=50', '--target_val_loss=100', '--eval_interval=5')
    assert run_logs(tmp_path / 'b')[0]['summary']['stop_reason'] == 'target_val_loss'
    # an infinite learning rate blows the weights up; the run stops and keeps the last good checkpoint
    out = tmp_path / 'c'
    train(data, out, '--max_iters=2', '--eval_interval=2')
    before = (out / 'ckpt_2.pt').read_bytes()
    r = train(data, out, '--max_iters=20', '--init_from=resume', '--learning_rate=1e400', '--grad_clip=0',
              '--log_interval=1', '--eval_interval=3', check=False)
    assert r.returncode == 1 and 'loss is nan' in r.stderr and 'Traceback' not in r.stderr
    assert sorted(n for n in os.listdir(out) if n.startswith('ckpt_')) == ['ckpt_2.pt']
    assert (out / 'ckpt_2.pt').read_bytes() == before


def test_ctrl_c_checkpoints_and_exits(data, tmp_path):
    out = tmp_path / 'o'
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), f'--data_dir={data}', f'--out_dir={out}',
                             *TINY_MODEL, '--max_iters=1000000', '--log_interval=1', '--eval_interval=1000000'],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # wait until training has started
        if line.startswith('iter 3:'):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert 'interrupted' in stdout and 'Traceback' not in stderr
    [ckpt] = [n for n in os.listdir(out) if n.startswith('ckpt_')]
    assert torch.load(out / ckpt, weights_only=True)['iter_num'] == int(ckpt[5:-3]) >= 3
    assert run_logs(out)[0]['summary']['stop_reason'] == 'interrupted'


def test_moe_run_logs_aux_loss_separately(data, tmp_path):
    train(data, tmp_path / 'o', '--arch_preset=moe', '--n_kv_head=1', '--max_iters=2', '--log_interval=1',
          '--eval_interval=2')
    entries = run_logs(tmp_path / 'o')[0]['training_iterations']
    assert all(e['aux_loss'] >= 0.99 and e['loss'] > 0 for e in entries)


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr and len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    return lines[0]


def test_bad_inputs_fail_cleanly_and_keep_existing_files(data, tmp_path):
    out = tmp_path / 'o'
    train(data, out, '--max_iters=2', '--eval_interval=2')
    snapshot = {n: (out / n).read_bytes() for n in os.listdir(out)}
    # a real interpreter once, so a traceback on stderr could not hide; the rest run in-process (same exit path)
    assert 'unknown dataset' in one_error_line(run('train.py', '--dataset=nope', f'--out_dir={out}', '--overwrite=True',
                                                   in_process=False))
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert 'meta.json is missing' in one_error_line(train(empty, out, '--overwrite=True', check=False))
    (empty / 'meta.json').write_bytes((Path(data) / 'meta.json').read_bytes())
    assert 'train.bin' in one_error_line(train(empty, out, '--overwrite=True', check=False))
    (empty / 'train.bin').write_bytes((Path(data) / 'train.bin').read_bytes()[:-2])  # one uint16 short
    (empty / 'val.bin').write_bytes((Path(data) / 'val.bin').read_bytes())
    assert 'prepare it again' in one_error_line(train(empty, out, '--overwrite=True', check=False))
    assert "sampling='shuffled' is invalid" in one_error_line(
        train(data, out, '--overwrite=True', '--sampling=shuffled', check=False))
    assert 'larger than the model' in one_error_line(train(data, out, '--overwrite=True', '--vocab_size=5', check=False))
    assert 'block_size=100000 is larger' in one_error_line(
        train(data, out, '--overwrite=True', '--block_size=100000', check=False))
    assert 'no such file' in one_error_line(
        train(data, out, '--init_from=resume', f'--resume_from={tmp_path}/missing.pt', check=False))
    assert 'already holds checkpoints' in one_error_line(train(data, out, check=False))
    assert "n_kv_head=3" in one_error_line(train(data, out, '--overwrite=True', '--n_kv_head=3', check=False))
    assert 'init_from' in one_error_line(train(data, out, '--init_from=gpt5', check=False))
    assert "did you mean 'max_iters'" in one_error_line(train(data, out, '--max_iter=3', check=False))
    assert 'no checkpoint to resume' in one_error_line(train(data, tmp_path / 'fresh', '--init_from=resume', check=False))
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == snapshot
    # an explicit overwrite does start over
    train(data, out, '--overwrite=True', '--max_iters=1', '--eval_interval=1')
    kept = sorted(n for n in os.listdir(out) if n.endswith('.pt'))
    assert kept in (['ckpt_1.pt'], ['best.pt', 'ckpt_1.pt'])  # ckpt_2.pt is gone; best.pt if iteration 1 improved
    if 'best.pt' in kept and 'best.pt' in snapshot:
        assert (out / 'best.pt').read_bytes() != snapshot['best.pt']


def test_sample_bad_inputs(data, tmp_path):
    assert 'no loadable checkpoint' in one_error_line(run('sample.py', f'--out_dir={tmp_path}', in_process=False))
    assert 'not found' in one_error_line(run('sample.py', f'--ckpt={tmp_path}/x.pt'))
    (tmp_path / 'torn.pt').write_bytes(b'not a whole checkpoint')
    assert 'cannot read checkpoint' in one_error_line(run('sample.py', f'--ckpt={tmp_path}/torn.pt'))
    import checkpoint as ckpt_files
    (tmp_path / 'ckpt_4').mkdir()  # a sharded checkpoint: train_state.pt and the shards' .metadata
    (tmp_path / 'ckpt_4' / '.metadata').write_bytes(b'')
    ckpt_files.save({'iter_num': 4, 'world_size': 2}, str(tmp_path / 'ckpt_4' / 'train_state.pt'))
    assert 'sharded checkpoint' in one_error_line(run('sample.py', f'--out_dir={tmp_path}'))
    assert 'allowed: auto, float32' in one_error_line(run('sample.py', f'--out_dir={tmp_path}', '--dtype=fp8'))


def test_wandb_offline(data, tmp_path, monkeypatch):
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_DIR', str(tmp_path))
    # MoE and per-layer statistics: the nested fields must reach wandb too
    train(data, tmp_path / 'o', '--max_iters=2', '--eval_interval=2', '--log_interval=1', '--wandb_log=True',
          '--arch_preset=moe', '--n_kv_head=1', '--grad_stats_interval=1')
    runs = [n for n in os.listdir(tmp_path / 'wandb') if n.startswith('offline-run-')]
    assert len(runs) == 1 and os.listdir(tmp_path / 'wandb' / runs[0])


def test_shakespeare_char_demo_config_runs_briefly(tmp_path):
    src = os.path.join(SHARED, 'tinyshakespeare.txt')
    if not os.path.isfile(src):
        pytest.skip('../shared/data/tinyshakespeare.txt not present')
    r = run('data/shakespeare_char/prepare.py', f'--input={src}', f'--out_dir={tmp_path / "d"}')
    assert r.returncode == 0, r.stderr
    r = run('train.py', 'config/train_shakespeare_char_cpu.py', f'--data_dir={tmp_path / "d"}',
            f'--out_dir={tmp_path / "o"}', '--max_iters=30', '--eval_interval=30', '--log_interval=10')
    assert r.returncode == 0, r.stderr
    evals = run_logs(tmp_path / 'o')[0]['eval_steps']
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 0.5

"""bench/speedrun.py: nanoGPT's recipe and ours timed side by side, per seed, the worst ratio reported."""
import json
import os

from helpers import make_char_dataset, run

FAKE_NANOGPT = """import sys, time
time.sleep(0.3)
print('step 0: train loss 4.2000, val loss 4.2100')
print('step 2000: train loss 1.7600, val loss 1.8857')
assert '--n_head=4' in sys.argv and '--max_iters=2000' in sys.argv and '--device=cpu' in sys.argv
"""


def test_speedrun_times_both_per_seed_and_reports_the_worst(tmp_path):
    nanogpt = tmp_path / 'nanoGPT'
    (nanogpt / 'data' / 'shakespeare_char').mkdir(parents=True)
    (nanogpt / 'train.py').write_text(FAKE_NANOGPT)
    (nanogpt / 'data' / 'shakespeare_char' / 'train.bin').write_bytes(b'')  # prepared already
    text = tmp_path / 'input.txt'
    text.write_text('hello\n')
    data = make_char_dataset(tmp_path / 'data')
    work = tmp_path / 'work'
    result = run('bench/speedrun.py', f'--nanogpt={nanogpt}', f'--input={text}', '--seeds=3,5', '--target=100',
                 f'--results_dir={tmp_path / "results"}', f'--work_dir={work}', f'--data_dir={data}', '--n_layer=1', '--n_embd=32',
                 '--n_head=2', '--block_size=16', '--batch_size=2', '--max_iters=3', '--lr_decay_iters=3',
                 '--warmup_iters=1', '--eval_iters=2', in_process=False)
    assert result.returncode == 0, result.stdout + result.stderr
    [name] = os.listdir(tmp_path / 'results')
    record = json.loads((tmp_path / 'results' / name).read_text())
    assert [p['seed'] for p in record['pairs']] == [3, 5]
    for pair in record['pairs']:
        assert pair['nanogpt_val_loss'] == 1.8857 and pair['nanogpt_s'] >= 0.3
        assert abs(pair['ratio'] / (pair['ours_s'] / pair['nanogpt_s']) - 1) < 0.01
        assert 2.0 < pair['ours_val_loss'] < 5.0  # the last evaluation of our run log
    assert record['worst']['ratio'] == max(p['ratio'] for p in record['pairs'])
    assert record['target_reached'] and 'worst ratio' in result.stdout
    # what ran, as run: the commit with its dirty flag and the config our runs resolved
    assert record['commit'] and record['dirty'] in (True, False)
    assert record['resolved_config']['n_layer'] == 1 and record['resolved_config']['optimizer'] == 'muon'
    kept = sorted(os.listdir(work / 'ours_3'))
    assert kept and not [name for name in kept if name.endswith('.pt')]  # checkpoints removed, run log kept
    # a run of ours that misses the target makes the claim fail: exit 1
    result = run('bench/speedrun.py', f'--nanogpt={nanogpt}', f'--input={text}', '--seeds=1', '--target=0.5',
                 f'--results_dir={tmp_path / "results"}', f'--work_dir={work}', f'--data_dir={data}', '--n_layer=1', '--n_embd=32',
                 '--n_head=2', '--block_size=16', '--batch_size=2', '--max_iters=2', '--eval_iters=1')
    assert result.returncode == 1 and 'MISSED' in result.stdout
    # a run of ours without an evaluation has no val loss to claim: one line, no traceback
    result = run('bench/speedrun.py', f'--nanogpt={nanogpt}', f'--input={text}', '--seeds=1',
                 f'--results_dir={tmp_path / "results"}', f'--work_dir={work}', f'--data_dir={data}', '--n_layer=1',
                 '--n_embd=32', '--n_head=2', '--block_size=16', '--batch_size=2', '--max_iters=1', '--eval_iters=0')
    assert result.returncode == 1 and 'no evaluation' in result.stderr and 'Traceback' not in result.stderr


def test_speedrun_refuses_bad_arguments(tmp_path):
    nanogpt = tmp_path / 'nanoGPT'
    nanogpt.mkdir()
    (nanogpt / 'train.py').write_text('')
    text = tmp_path / 'input.txt'
    text.write_text('hello\n')
    for args, message in ((['--nanogpt=/nonexistent'], 'give a nanoGPT checkout'),
                          (['--warp'], "unknown argument '--warp'"),
                          ([f'--nanogpt={nanogpt}', f'--input={text}'], 'no data/shakespeare_char folder'),
                          ([f'--nanogpt={nanogpt}', f'--input={text}', '--seeds=0'], 'give a count of 1 or more'),
                          ([f'--nanogpt={nanogpt}', f'--input={text}', '--seeds=x'], 'is not a number')):
        result = run('bench/speedrun.py', *args)
        assert result.returncode == 2 and message in result.stderr and 'Traceback' not in result.stderr

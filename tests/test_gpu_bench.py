"""bench/gpu.py, the one command for every GPU figure, in its tiny version: every step runs on a CPU."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_bench_runs_every_step_in_its_tiny_version(tmp_path):
    text = tmp_path / 'shakespeare.txt'
    text.write_text('First Citizen:\nBefore we proceed any further, hear me speak.\n\n' * 400)
    # one model in the throughput step (the MoE, compiled too): the other presets' graphs are tested elsewhere
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'gpu.py'), f'--results_dir={tmp_path}',
                             f'--shakespeare={text}', '--models=config/full_moe_200m.py'],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [path] = [p for p in os.listdir(tmp_path) if p.endswith('.json')]
    record = json.loads((tmp_path / path).read_text())
    steps = record['steps']
    assert record['tiny'] and record['torch'] and record['git_commit'] is not None
    assert steps['flash']['status'] == 'unavailable' and 'CUDA' in steps['flash']['reason']  # refused, clearly
    rows = steps['throughput']['rows']
    assert [r['compile'] for r in rows] == [False, True] and all(r['tokens_per_sec'] > 0 for r in rows)
    assert steps['fsdp']['status'] == 'ok' and steps['fsdp']['max_loss_difference'] <= 1e-6
    big = steps['fsdp_1.36b']
    assert big['status'] == 'ok' and big['peak_host_mib'] > 0 and big['first_step_s'] is not None
    shakespeare = steps['shakespeare']
    assert shakespeare['status'] == 'ok' and shakespeare['reached'] and shakespeare['seconds_to_target'] > 0
    table = (tmp_path / path.replace('.json', '.md')).read_text()
    assert '| fsdp |' in table and 'full_moe_200m, compiled' in table and 'tiny version' in table


def test_gpu_bench_rejects_bad_arguments(tmp_path):
    for args, message in ((['--steps=flash,warp'], "unknown step 'warp'"),
                          (['--models=config/nope.py'], 'no config file config/nope.py'),
                          (['--shakespeare=/nonexistent.txt'], 'no such file')):
        result = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'gpu.py'), *args,
                                 f'--results_dir={tmp_path}'], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 2 and message in result.stderr and 'Traceback' not in result.stderr

"""Long runs: init_from='auto', SIGTERM/SIGUSR1 checkpoints, kill -9 and relaunch, failed checkpoint writes,
the run log as an append-only stream, progress a user can see, launch flags of other tools."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import runlog
from helpers import ROOT, SHARED, TINY_MODEL, iteration_losses, make_char_dataset, run, run_logs, train

# the schedule does not depend on how the run is cut into launches
RUN = ['--max_iters=60', '--eval_interval=10', '--log_interval=1', '--lr_decay_iters=60', '--warmup_iters=5',
       '--dropout=0.1', '--gradient_accumulation_steps=2', '--init_from=auto']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_char_dataset(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def straight(data, tmp_path_factory):
    """The uninterrupted run every relaunched one must equal."""
    out = tmp_path_factory.mktemp('straight')
    train(data, out, *RUN)
    return out


def launch(data, out, *args):
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), f'--data_dir={data}', f'--out_dir={out}',
                             *TINY_MODEL, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def final_state(out):
    ckpt = torch.load(out / 'ckpt_60.pt', weights_only=True)
    return ckpt['best_val_loss'], ckpt['model']


def assert_same_run(out, reference):
    a, b = final_state(out), final_state(reference)
    assert a[0] == b[0]  # the final val loss, bit for bit
    assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert iteration_losses(out) == iteration_losses(reference)
    assert [e['val_loss'] for log in run_logs(out) for e in log['eval_steps']][-1] == \
        [e['val_loss'] for log in run_logs(reference) for e in log['eval_steps']][-1]


def test_auto_starts_from_scratch_then_resumes(data, tmp_path):
    first = train(data, tmp_path / 'o', '--max_iters=4', '--eval_interval=2', '--init_from=auto')
    assert "init_from='auto': no checkpoint" in first.stdout
    again = train(data, tmp_path / 'o', '--max_iters=6', '--eval_interval=2', '--init_from=auto')
    assert 'resuming from' in again.stdout and 'ckpt_4.pt' in again.stdout


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGUSR1])
def test_scheduler_signal_checkpoints_and_relaunch_is_exact(data, straight, tmp_path, signum):
    out = tmp_path / 'o'
    proc = launch(data, out, *RUN, '--max_iters=60')
    for line in proc.stdout:  # once training runs, between evaluations
        if line.startswith('iter 13:'):
            break
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr  # checkpointed: run the same command again
    assert signal.Signals(signum).name in stdout and 'Traceback' not in stderr
    log = runlog.load(runlog.log_paths(out)[0])
    stopped = log['summary']['iterations']
    assert log['summary']['stop_reason'] == 'preempted' and 13 <= stopped < 60
    assert os.path.exists(out / f'ckpt_{stopped}.pt')
    train(data, out, *RUN)  # the same command finishes the run
    assert_same_run(out, straight)


def test_kill_9_at_random_moments_then_relaunch_until_done(data, straight, tmp_path):
    out, rng, kills = tmp_path / 'o', random.Random(0), 0
    for low, high in ((3, 9), (12, 30), (31, 58)):  # before the first checkpoint, then anywhere
        target = rng.randint(low, high)
        proc = launch(data, out, *RUN)
        for line in proc.stdout:
            if line.startswith('iter ') and int(line.split(':')[0][5:]) >= target:
                proc.kill()  # SIGKILL: no handler runs, whatever the run was doing
                kills += 1
                break
        proc.communicate()
    train(data, out, *RUN)
    assert kills == 3
    assert_same_run(out, straight)
    # a killed launch leaves its .jsonl; it still reads (a torn last line is dropped)
    assert all('startup_info' in log for log in run_logs(out))


def test_a_failed_checkpoint_write_keeps_the_last_one(data, tmp_path):
    out = tmp_path / 'o'
    out.mkdir()
    blocker = out / f'ckpt_4.pt.{os.getpid()}.tmp'  # the temp name of files.atomic_write (train runs in-process)
    blocker.mkdir()  # writing ckpt_4.pt will fail, as on a full disk
    r = train(data, out, '--max_iters=6', '--eval_interval=2', check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and 'Traceback' not in r.stderr
    assert 'could not write' in lines[0] and 'ckpt_4.pt' in lines[0] and 'previous checkpoint is untouched' in lines[0]
    assert torch.load(out / 'ckpt_2.pt', weights_only=True)['iter_num'] == 2
    blocker.rmdir()
    resumed = train(data, out, '--max_iters=6', '--eval_interval=2', '--init_from=auto')
    assert 'ckpt_2.pt' in resumed.stdout


def test_run_log_is_a_stream_until_the_end(data, tmp_path):
    out = tmp_path / 'o'
    proc = launch(data, out, '--max_iters=1000000', '--log_interval=1', '--eval_interval=1000000')
    for line in proc.stdout:
        if line.startswith('iter 5:'):
            break
    [path] = runlog.log_paths(out)  # mid-run: the .jsonl, readable as it grows
    assert path.endswith('.jsonl')
    torn = str(tmp_path / 'run_torn.jsonl')
    with open(path) as f, open(torn, 'w') as copy:
        copy.write(f.read() + '{"event": "iteration", "iter": 9')  # a line torn by a crash
    log = runlog.load(torn)
    assert [e['iter'] for e in log['training_iterations']][:5] == [1, 2, 3, 4, 5]
    assert log['startup_info']['warmup_s'] > 0 and log['summary'] == {}
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    [done] = runlog.log_paths(out)
    assert done.endswith('.json') and not os.path.exists(done + 'l')
    whole = json.load(open(done))  # the whole run, in the documented schema
    assert set(whole) == {'run_name', 'start_time', 'config', 'startup_info', 'training_iterations', 'eval_steps',
                          'checkpoints', 'summary'}
    assert whole['summary']['stop_reason'] == 'interrupted' and whole['summary']['median_time_ms'] > 0
    entries = whole['training_iterations']
    assert entries[0]['iter'] == 1 and all(e['eta_s'] >= 0 for e in entries)


def test_progress_and_a_note_for_runs_far_too_long(data, tmp_path):
    r = train(data, tmp_path / 'o', '--max_iters=100000000', '--max_time=1', '--log_interval=1',
              '--eval_interval=100000000', '--save_checkpoints=False')
    assert 'note:' in r.stdout and 'per iteration on this cpu' in r.stdout and 'train_shakespeare_char_cpu' in r.stdout
    assert 'ETA' in [line for line in r.stdout.splitlines() if 'ms/iter' in line][-1]
    short = train(data, tmp_path / 'p', '--max_iters=5')
    assert 'note:' not in short.stdout


def test_flags_of_other_trainers_are_aliases_and_a_conflict_is_one_line(data, tmp_path):
    for flag, mode in (('--use_fsdp=True', 'fsdp'), ('--use_zero1=True', 'zero1')):
        train(data, tmp_path / mode, flag, '--max_iters=1', '--eval_interval=1')
        assert run_logs(tmp_path / mode)[0]['config']['parallelism'] == mode
    assert run_logs(tmp_path / 'fsdp')[0]['startup_info']['hardware']['parallelism'] == 'single'  # no torchrun
    for flags in (('--use_fsdp=True', '--parallelism=zero1'), ('--parallelism=ddp', '--use_zero1=True'),
                  ('--use_fsdp=True', '--use_zero1=True')):
        r = train(data, tmp_path / 'x', *flags, check=False)
        assert r.returncode == 2 and 'conflicts with' in r.stderr and len(r.stderr.strip().splitlines()) == 1, flags
    r = train(data, tmp_path / 'x', '--use_fsdp=yes', check=False)
    assert r.returncode == 2 and 'expected True or False' in r.stderr
    ok = train(data, tmp_path / 'y', '--use_fsdp=False', '--parallelism=zero1', '--max_iters=1', '--eval_interval=1')
    assert ok.returncode == 0


def test_shakespeare_char_is_prepared_on_first_use(tmp_path):
    folder = os.path.join(ROOT, 'data', 'shakespeare_char')
    if os.path.exists(os.path.join(folder, 'meta.json')):
        pytest.skip('data/shakespeare_char is already prepared in this checkout')
    source = os.path.join(folder, 'input.txt')
    if not os.path.exists(source) and not os.path.isfile(os.path.join(SHARED, 'tinyshakespeare.txt')):
        pytest.skip('no Tiny Shakespeare: neither data/shakespeare_char/input.txt nor ../shared/data')
    placed = not os.path.exists(source)
    if placed:  # where prepare.py finds an earlier download
        shutil.copyfile(os.path.join(SHARED, 'tinyshakespeare.txt'), source)
    try:
        r = run('train.py', 'config/train_shakespeare_char_cpu.py', f'--out_dir={tmp_path / "o"}', '--max_iters=2',
                '--eval_iters=2')
        assert r.returncode == 0, r.stderr
        assert 'not prepared yet: running data/shakespeare_char/prepare.py' in r.stdout
        assert os.path.exists(os.path.join(folder, 'meta.json'))
    finally:
        for name in ('train.bin', 'val.bin', 'meta.json') + (('input.txt',) if placed else ()):
            if os.path.exists(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))


def test_a_signal_during_a_long_evaluation_stops_at_once(data, tmp_path):
    proc = launch(data, tmp_path / 'o', '--eval_iters=1000000', '--max_iters=10')
    # the first evaluation (a million batches) is running: its note is said from inside it, once the stop signals
    # are caught. (Not the start-up report's last line: train.py prints it just before it catches them, and a
    # SIGTERM sent on reading it could land first and kill the run, exit status -15, on a busy machine.)
    for line in proc.stdout:
        if line.startswith('first step') or 'evaluating' in line:
            break
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 75 and 'stopped at iteration 0: preempted' in stdout, stdout + stderr


def test_a_stop_request_does_not_outlive_its_run(data, tmp_path):
    # run_control's module state stays in a process that runs train.py twice (a notebook, a sweep driver)
    import run_control
    run_control.stop_request = 'interrupted'  # what a Ctrl-C left behind in the first run
    r = train(data, tmp_path / 'o', '--max_iters=3', '--eval_interval=3')
    assert 'stopped at iteration 3: max_iters' in r.stdout

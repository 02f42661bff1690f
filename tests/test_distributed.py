"""DDP, ZeRO-1 and FSDP with 2 gloo processes on CPU, checked against one process."""
import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import (ROOT, TINY_MODEL, assert_optimizer_follows, iteration_losses, make_char_dataset,
                     make_sharded_dataset, run_logs, torchrun_each, train, train_run)

# 4 global micro-steps: one process accumulates 4, each of 2 ranks accumulates 2
RUN = ['--max_iters=6', '--gradient_accumulation_steps=4', '--eval_interval=3', '--log_interval=1',
       '--lr_decay_iters=6', '--warmup_iters=2']
# one process sums 4 micro-step gradients in one order, 2 ranks in another: float rounding, nothing more.
# (with 2 ranks x 1 micro-step the orders coincide and the losses are bit-identical, see below)
TOLERANCE = 1e-6


def torchrun(data_dir, out_dir, *args, check=True, script=os.path.join(ROOT, 'train.py')):
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                             str(script), f'--data_dir={data_dir}', f'--out_dir={out_dir}',
                             *TINY_MODEL, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return result


def assert_same_losses(a, b, iters=range(1, 7), tolerance=TOLERANCE):
    assert all(i in a and i in b for i in iters), (sorted(a), sorted(b))
    worst = max(abs(a[i] - b[i]) for i in iters)
    assert worst <= tolerance, (worst, a, b)


MOE = ['--arch_preset=moe', '--n_kv_head=1', '--max_iters=2', '--gradient_accumulation_steps=2',
       '--eval_interval=100', '--log_interval=2']
EPOCH = ['--max_iters=4', '--gradient_accumulation_steps=2', '--eval_interval=100', '--log_interval=1']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Straight runs, each in one process and (all in one launch) under 2 ranks: 6 iterations in each parallel
    mode, FSDP with a sharded checkpoint (3 iterations), the MoE under DDP, DDP on a sharded corpus."""
    root = tmp_path_factory.mktemp('dist')
    data = make_char_dataset(root / 'data')
    corpus = make_sharded_dataset(root / 'corpus')
    train(data, root / 'single', *RUN)
    train(data, root / 'moe_single', *MOE)
    train(corpus, root / 'epoch_single', *EPOCH)
    # zero1 and fsdp launched with the flags users of nanoGPT-style trainers type: aliases of parallelism
    torchrun_each(root, [train_run(data, root / 'ddp', *RUN, '--parallelism=ddp'),
                         train_run(data, root / 'zero1', *RUN, '--use_zero1=True'),
                         train_run(data, root / 'fsdp', *RUN, '--use_fsdp=True'),
                         train_run(data, root / 'sharded', *RUN, '--max_iters=3', '--parallelism=fsdp',
                                   '--checkpoint_format=sharded'),
                         train_run(data, root / 'moe_ddp', *MOE, '--parallelism=ddp'),
                         train_run(corpus, root / 'epoch_ddp', *EPOCH, '--parallelism=ddp')])
    return root, data


@pytest.mark.parametrize('mode', ['ddp', 'zero1', 'fsdp'])
def test_parallel_modes_match_single_process(runs, mode):
    root, _ = runs
    assert_same_losses(iteration_losses(root / mode), iteration_losses(root / 'single'))
    log = run_logs(root / mode)[0]
    assert log['startup_info']['hardware']['world_size'] == 2 and log['startup_info']['hardware']['parallelism'] == mode
    assert [e['iter'] for e in log['training_iterations']] == [1, 2, 3, 4, 5, 6]  # rank 0 alone writes the log
    single_eval = run_logs(root / 'single')[0]['eval_steps']
    for a, b in zip(log['eval_steps'], single_eval):  # evaluation is averaged over both ranks' batches
        assert a['iter'] == b['iter'] and a['val_loss'] == pytest.approx(b['val_loss'], abs=1e-5)


def test_memory_is_sharded(runs):
    root, _ = runs
    memory = {mode: run_logs(root / mode)[0]['startup_info']['memory_per_rank']
              for mode in ('single', 'ddp', 'zero1', 'fsdp')}
    full = memory['single']
    assert memory['ddp'] == full
    # ZeRO-1 shards the optimizer state only, FSDP parameters, gradients and optimizer state
    assert memory['zero1']['parameter_bytes'] == full['parameter_bytes']
    assert 0.3 < memory['zero1']['optimizer_bytes'] / full['optimizer_bytes'] < 0.7
    for key in ('parameter_bytes', 'gradient_bytes', 'optimizer_bytes'):
        assert 0.45 < memory['fsdp'][key] / full[key] < 0.55, key


NEW_SETTINGS = ['--learning_rate=3e-4', '--min_lr=3e-5', '--weight_decay=0.05', '--beta1=0.8', '--beta2=0.99']
MOVES = [('fsdp', 'single'), ('fsdp', 'ddp'), ('single', 'fsdp'), ('zero1', 'ddp'), ('ddp', 'zero1')]


@pytest.fixture(scope='module')
def resumed(runs):
    """Runs that resume the straight ones (all but one in one launch): full checkpoints moved between modes, the
    sharded checkpoint resumed under FSDP, ZeRO-1 and sharded FSDP resumed with new hyperparameters."""
    import shutil
    root, data = runs
    launch = []
    for source, target in MOVES:
        args = [*RUN, '--init_from=resume', f'--resume_from={root / source / "ckpt_3.pt"}']
        if target == 'single':
            train(data, root / f'{source}-{target}', *args)
        else:
            launch.append(train_run(data, root / f'{source}-{target}', *args, f'--parallelism={target}'))
    for name in ('sharded_resumed', 'sharded_new'):  # each resumes a copy of the 3-iteration sharded run's folder
        shutil.copytree(root / 'sharded', root / name)
    launch.append(train_run(data, root / 'sharded_resumed', *RUN, '--init_from=resume', '--parallelism=fsdp',
                            '--checkpoint_format=sharded'))
    # ZeRO-1 from a full checkpoint; FSDP from a sharded one (torch.distributed.checkpoint restores the groups too)
    launch.append(train_run(data, root / 'zero1_new', *RUN, '--max_iters=4', '--parallelism=zero1',
                            '--init_from=resume', f'--resume_from={root / "zero1" / "ckpt_3.pt"}', *NEW_SETTINGS))
    launch.append(train_run(data, root / 'sharded_new', *RUN, '--max_iters=4', '--parallelism=fsdp',
                            '--checkpoint_format=sharded', '--init_from=resume', *NEW_SETTINGS))
    torchrun_each(root, launch)
    return root, data


@pytest.mark.parametrize('source,target', MOVES)
def test_full_checkpoints_move_between_modes(resumed, source, target):
    root, _ = resumed
    resumed = iteration_losses(root / f'{source}-{target}')
    assert sorted(resumed) == [4, 5, 6]
    assert_same_losses(resumed, iteration_losses(root / source), iters=[4, 5, 6])


def test_sharded_checkpoint_resumes_under_fsdp(resumed, tmp_path):
    root, data = resumed
    first = root / 'sharded' / 'ckpt_3'
    assert (first / '.metadata').exists() and (first / 'train_state.pt').exists()
    out = root / 'sharded_resumed'  # resumed with init_from=resume from the newest checkpoint there, ckpt_3
    assert_same_losses(iteration_losses(out), iteration_losses(root / 'fsdp'))
    # a sharded checkpoint needs the same FSDP world size
    r = train(data, tmp_path / 'x', *RUN, '--init_from=resume', f'--resume_from={out / "ckpt_3"}', check=False)
    assert r.returncode == 2 and 'sharded checkpoint from 2 FSDP ranks' in r.stderr


def test_resume_takes_new_hyperparameters_under_zero1_and_sharded_fsdp(resumed, tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    root, _ = resumed
    # ZeRO-1 from a full checkpoint: its exposed and local param groups both get this run's settings
    lr = run_logs(root / 'zero1_new')[-1]['training_iterations'][-1]['lr']
    groups = torch.load(root / 'zero1_new' / 'ckpt_4.pt', weights_only=True)['optimizer']['param_groups']
    assert_optimizer_follows(groups, 3e-4, lr, 0.05, (0.8, 0.99))
    # FSDP from a sharded checkpoint (torch.distributed.checkpoint restores the groups too)
    out = root / 'sharded_new'
    lr = run_logs(out)[-1]['training_iterations'][-1]['lr']
    dcp_to_torch_save(str(out / 'ckpt_4'), str(tmp_path / 'ckpt_4.pt'))
    groups = torch.load(tmp_path / 'ckpt_4.pt', weights_only=False)['optimizer']['param_groups']
    assert_optimizer_follows(groups, 3e-4, lr, 0.05, (0.8, 0.99))


def wrapped_train(tmp_path, prelude):
    """A script that runs `prelude` (Python, with os, sys and ROOT's modules importable) and then train.py."""
    script = tmp_path / 'wrapped_train.py'
    script.write_text(f"import atexit, os, runpy, sys\nsys.path.insert(0, {ROOT!r})\n{prelude}\n"
                      f"sys.argv[0] = {os.path.join(ROOT, 'train.py')!r}\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
    return script


def test_rank_0_picks_the_checkpoint_and_a_rank_that_cannot_read_it_stops_every_rank(runs, tmp_path):
    # rank 1 cannot read the checkpoint (a filesystem that is not shared, a read error): before, it fell back to
    # an older one or none and the ranks trained from different iterations; now every rank stops with the reason
    import shutil
    root, data = runs
    shutil.copytree(root / 'ddp', tmp_path / 'o')
    script = wrapped_train(tmp_path, """import checkpoint
if os.environ['RANK'] == '1':
    def unreadable(path):
        raise OSError(5, 'Input/output error')
    checkpoint.load = unreadable""")
    r = torchrun(data, tmp_path / 'o', *RUN, '--max_iters=8', '--init_from=auto', check=False, script=script)
    ours = [line for line in r.stderr.splitlines() if line.startswith('error: ')]
    assert r.returncode != 0 and len(ours) == 2, r.stderr[-3000:]
    assert ours[0].startswith(f"error: rank 1 cannot read {tmp_path / 'o' / 'ckpt_6.pt'} (OSError")
    assert ours[1] == f"error: not every rank could read {tmp_path / 'o' / 'ckpt_6.pt'} (the failing ranks say why)"
    assert not os.path.exists(tmp_path / 'o' / 'ckpt_8.pt')


def test_two_ranks_without_accumulation_are_bit_identical(runs, tmp_path):
    _, data = runs
    args = ['--max_iters=5', '--gradient_accumulation_steps=2', '--eval_interval=100', '--log_interval=1',
            '--dropout=0.1']  # dropout masks follow the global micro-step, so they match too
    train(data, tmp_path / 'single', *args)
    # and DDP broadcasts the buffers once, when it starts, not before every forward (none changes in training)
    script = wrapped_train(tmp_path, """import torch.distributed as dist
calls = [0]
broadcast = dist._broadcast_coalesced
def counted(*a, **k):
    calls[0] += 1
    return broadcast(*a, **k)
dist._broadcast_coalesced = counted
atexit.register(lambda: print(f"rank {os.environ['RANK']}: {calls[0]} broadcasts", flush=True))""")
    r = torchrun(data, tmp_path / 'ddp', *args, '--parallelism=ddp', script=script)
    assert iteration_losses(tmp_path / 'ddp') == iteration_losses(tmp_path / 'single')
    # the two ranks print at once, so their lines can run together: found wherever they are
    counts = re.findall(r'rank (\d): (\d+) broadcasts', r.stdout)
    assert sorted(counts) == [('0', '1'), ('1', '1')], r.stdout[-2000:]


def test_moe_expert_shares_under_ddp_equal_one_process(runs):
    # each layer's shares sum to 1 over all ranks' slots (they once summed to 1 / world size)
    root, _ = runs
    [single], [ddp] = (run_logs(root / name)[0]['training_iterations'] for name in ('moe_single', 'moe_ddp'))
    assert len(ddp['expert_fractions']) == 2
    for a, b in zip(ddp['expert_fractions'], single['expert_fractions']):
        assert sum(a) == pytest.approx(1.0) and a == pytest.approx(b, abs=1e-12)


def test_epoch_sampling_on_a_sharded_corpus_is_the_same_on_two_ranks(runs):
    root, _ = runs
    assert run_logs(root / 'epoch_ddp')[0]['startup_info']['dataset']['sampling'] == 'epoch'
    assert iteration_losses(root / 'epoch_ddp') == iteration_losses(root / 'epoch_single')


@pytest.mark.parametrize('args,message', [
    (['--gradient_accumulation_steps=3'], 'gradient_accumulation_steps=3 is not divisible by the world size 2'),
    (['--parallelism=tensor'], "parallelism='tensor' is invalid; allowed: ddp, zero1, fsdp"),
])
def test_bad_launch_fails_fast_on_rank_0(runs, tmp_path, args, message):
    _, data = runs
    r = torchrun(data, tmp_path / 'o', *args, check=False)
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if line.startswith('error: ')]
    assert ours == [f'error: {message}']  # one line, from rank 0 only


def test_fsdp_setting_without_torchrun_runs_single_process(runs, tmp_path):
    _, data = runs
    train(data, tmp_path / 'o', '--max_iters=2', '--parallelism=fsdp', '--eval_interval=2')
    assert run_logs(tmp_path / 'o')[0]['startup_info']['hardware']['parallelism'] == 'single'


def worker_pids(launcher_pid):
    """{rank: pid} of the processes below a torchrun launcher (from /proc)."""
    parents, ranks = {}, {}
    for entry in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{entry}/stat') as f:
                parents[int(entry)] = int(f.read().rsplit(')', 1)[1].split()[1])
            with open(f'/proc/{entry}/environ', 'rb') as f:
                env = dict(item.split(b'=', 1) for item in f.read().split(b'\0') if b'=' in item)
        except (OSError, ValueError, IndexError):
            continue
        pid, ancestors = int(entry), set()
        while pid in parents and pid not in ancestors:
            ancestors.add(pid)
            pid = parents[pid]
        if launcher_pid in ancestors and int(entry) != launcher_pid and b'RANK' in env and b'LOCAL_RANK' in env:
            ranks[int(env[b'RANK'])] = int(entry)
    return ranks


def test_torchrun_restarts_a_killed_rank_from_the_last_checkpoint(tmp_path):
    import signal
    import time
    data = make_char_dataset(tmp_path / 'data')
    # killed once ckpt_50.pt is there, 100 iterations before the end: time enough for the poll below to land first
    args = ['--max_iters=150', '--eval_interval=50', '--log_interval=10', '--lr_decay_iters=150',
            '--gradient_accumulation_steps=2', '--init_from=auto']
    train(data, tmp_path / 'single', *args)
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                             '--max-restarts=1', os.path.join(ROOT, 'train.py'), f'--data_dir={data}',
                             f'--out_dir={tmp_path / "ddp"}', *TINY_MODEL, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline, killed = time.time() + 120, None
    try:
        while time.time() < deadline and proc.poll() is None and killed is None:
            if os.path.exists(tmp_path / 'ddp' / 'ckpt_50.pt'):
                killed = worker_pids(proc.pid).get(1)
                if killed:
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=240)
    finally:  # a hung launch must not outlive the test
        for pid in worker_pids(proc.pid).values():
            os.kill(pid, signal.SIGKILL)
        proc.kill()
    assert killed and proc.returncode == 0, stderr[-3000:]
    logs = run_logs(tmp_path / 'ddp')
    assert len(logs) == 2 and logs[1]['startup_info']['resumed_from']['iter'] >= 50  # the restart resumed
    assert iteration_losses(tmp_path / 'ddp') == iteration_losses(tmp_path / 'single')


def test_sharded_save_over_a_checkpoint_of_the_same_iteration(tmp_path, monkeypatch):
    # after --resume_from an older sharded checkpoint, training writes ckpt_<iter>/ folders that already exist;
    # a failed write must leave the one there intact and say why (train.py turns that into one line, exit 1)
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    import checkpoint as ckpt_files
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = fully_shard(torch.nn.Linear(4, 4))
        optimizer = torch.optim.AdamW(model.parameters())
        path = str(tmp_path / 'ckpt_6')
        for tag in ('first', 'second'):
            assert ckpt_files.save_sharded(model, [optimizer], {'iter_num': 6, 'tag': tag}, path, True) == ''
            assert ckpt_files.load(path)['tag'] == tag and sorted(os.listdir(tmp_path)) == ['ckpt_6']
        real_replace = os.replace

        def full_disk(src, dst):
            if src == path + '.tmp':
                raise OSError(28, 'No space left on device')
            real_replace(src, dst)
        monkeypatch.setattr(os, 'replace', full_disk)
        why = ckpt_files.save_sharded(model, [optimizer], {'iter_num': 6, 'tag': 'third'}, path, True)
        assert 'No space left on device' in why and ckpt_files.load(path)['tag'] == 'second'
        monkeypatch.setattr(os, 'replace', real_replace)
        # a shard write that fails (on any rank) comes back as one line, not a CheckpointException traceback
        from torch.distributed.checkpoint.filesystem import FileSystemWriter

        def disk_full(*args, **kwargs):
            raise OSError(28, 'No space left on device')
        monkeypatch.setattr(FileSystemWriter, 'write_data', disk_full)
        why = ckpt_files.save_sharded(model, [optimizer], {'iter_num': 6, 'tag': 'fourth'}, path, True)
        assert why == f"could not write {path}.tmp: No space left on device" and ckpt_files.load(path)['tag'] == 'second'
        # killed between the two renames of a swap: the old folder is put back (the new one was incomplete)
        os.replace(path, path + '.old')
        ckpt_files.recover_interrupted_swap(str(tmp_path))
        assert ckpt_files.load(path)['tag'] == 'second' and not os.path.exists(path + '.old')
    finally:
        dist.destroy_process_group()

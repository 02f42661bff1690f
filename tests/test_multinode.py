"""Two torchrun agents on this machine acting as two nodes (c10d rendezvous on 127.0.0.1, one gloo worker each):
training like one process, a node's worker killed and the pair resumed by --max-restarts, and eval.py."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import ROOT, TINY_MODEL, iteration_losses, make_char_dataset, run, run_logs, train

# 2 global micro-steps: one process accumulates both, each node's rank takes one. peak_tflops is given because
# measuring the CPU's peak would cost every worker seconds
RUN = ['--max_iters=8', '--gradient_accumulation_steps=2', '--eval_interval=4', '--log_interval=1',
       '--lr_decay_iters=8', '--warmup_iters=2', '--init_from=auto', '--peak_tflops=1']
# the README's bound for gradients summed in another order than one process sums them
TOLERANCE = 1e-6
# eval.py's items: only characters of the training text, so the character tokenizer encodes them
ITEMS = {
    'lambada': [{'text': t} for t in ('abc dea fgh abc dea', 'hij abc hij abc', 'a b c a b c', 'bad cab bad cab',
                                      'ij hg fe ij hg fe')],
    'winogrande': [{'sentence': s, 'option1': 'ab', 'option2': 'cd', 'answer': a} for s, a in
                   (('abc def _ ghi jab', '1'), ('_ cab hij', '2'), ('ij _ ab', '1'), ('fed _ ca', '2'), ('_ a', '1'))],
}
# the first start's rank 0, right after writing its first checkpoint, SIGKILLs rank 1 (whose pid every worker
# writes) and waits there until torchrun's SIGTERM ends it: so the kill lands mid-run however slow this machine
# is, and rank 0's node is restarted because the other node asks to, not because its own worker failed
KILL_RANK_1 = """import os, re, runpy, signal, sys, time
sys.path.insert(0, {root!r})
with open(os.path.join({dir!r}, 'rank' + os.environ['RANK'] + '.pid'), 'w') as f:
    f.write(str(os.getpid()))
if os.environ['RANK'] == '0' and not os.path.exists({killed!r}):
    replace = os.replace
    def replace_then_kill_rank_1(src, dst):
        replace(src, dst)
        if re.fullmatch(r'ckpt_[0-9]+[.]pt', os.path.basename(dst)):
            with open(os.path.join({dir!r}, 'rank1.pid')) as f:
                os.kill(int(f.read()), signal.SIGKILL)
            with open({killed!r}, 'w') as f:
                f.write(os.path.basename(dst))
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # train.py's handler would checkpoint and go on
            while True:
                time.sleep(1)
    os.replace = replace_then_kill_rank_1
sys.argv[0] = {train!r}
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:  # all bound at once, so the ports differ
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def children(pid):
    """The processes whose parent is pid (a torchrun agent's workers), from /proc."""
    found = []
    for entry in filter(str.isdigit, os.listdir('/proc') if os.path.isdir('/proc') else []):
        try:
            with open(f'/proc/{entry}/stat') as f:
                if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


class TwoNodes:
    """`torchrun --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d` twice, as on two nodes, running script.

    c10d ignores --node_rank (torchrun says so): the rendezvous numbers the nodes, so rank 1 may be either's."""

    def __init__(self, root, name, port, script, *args, max_restarts=0):
        env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
        self.logs = [root / f'{name}.node{node}.log' for node in (0, 1)]
        self.procs = []
        for node, log in enumerate(self.logs):
            with open(log, 'w') as f:
                self.procs.append(subprocess.Popen(
                    [sys.executable, '-m', 'torch.distributed.run', '--nnodes=2', '--nproc_per_node=1',
                     f'--node_rank={node}', '--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{port}',
                     f'--max-restarts={max_restarts}', str(script), *map(str, args)],
                    cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env))

    def tails(self):
        return '\n'.join(f'--- {log.name}:\n{log.read_text()[-2500:]}' for log in self.logs)

    def kill(self):
        for p in self.procs:
            if p.poll() is None:  # running, so its pid and its children are still its own
                for pid in children(p.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                p.kill()
            p.wait()

    def wait(self, timeout=240):
        """Both agents' exit statuses, after at most timeout seconds (then they and their workers are killed)."""
        deadline = time.monotonic() + timeout
        try:
            for p in self.procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f'the two nodes did not finish in {timeout} s\n{self.tails()}')
        return [p.returncode for p in self.procs]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """One process's run and evaluation here, and three two-node launches started at once (they spend most of
    their time starting up): a plain run, one whose rank 1 is killed, and eval.py on the one process's checkpoint."""
    root = tmp_path_factory.mktemp('multinode')
    data = make_char_dataset(root / 'data')
    killer = root / 'kill_rank_1_train.py'
    killer.write_text(KILL_RANK_1.format(root=ROOT, dir=str(root), killed=str(root / 'killed'),
                                         train=os.path.join(ROOT, 'train.py')))
    evals = root / 'evals'
    evals.mkdir()
    for task, items in ITEMS.items():
        (evals / f'{task}.jsonl').write_text(''.join(json.dumps(i) + '\n' for i in items))
    eval_args = [f'--evals_dir={evals}', f'--data_dir={data}', f'--ckpt={root / "single" / "ckpt_8.pt"}']
    train(data, root / 'single', *RUN)  # before the launches, which share this machine's cores
    plain_port, restart_port, eval_port = free_ports(3)
    launches = {}
    try:
        launches['plain'] = TwoNodes(root, 'plain', plain_port, os.path.join(ROOT, 'train.py'), f'--data_dir={data}',
                                     f'--out_dir={root / "plain"}', *TINY_MODEL, *RUN)
        launches['restart'] = TwoNodes(root, 'restart', restart_port, killer, f'--data_dir={data}',
                                       f'--out_dir={root / "restart"}', *TINY_MODEL, *RUN, max_restarts=1)
        launches['eval'] = TwoNodes(root, 'eval', eval_port, os.path.join(ROOT, 'eval.py'), *eval_args,
                                    f'--out_dir={root / "eval_two"}')
        r = run('eval.py', *eval_args, f'--out_dir={root / "eval_single"}')
        assert r.returncode == 0, r.stderr
        yield root, launches
    finally:  # nothing outlives the tests, whatever failed
        for launch in launches.values():
            launch.kill()


def test_two_nodes_train_like_one_process(runs):
    root, launches = runs
    plain = launches['plain']
    assert plain.wait() == [0, 0], plain.tails()
    [log] = run_logs(root / 'plain')  # rank 0 alone writes it
    assert log['startup_info']['hardware']['world_size'] == 2
    two, one = iteration_losses(root / 'plain'), iteration_losses(root / 'single')
    assert sorted(two) == sorted(one) == list(range(1, 9))
    worst = max(abs(two[i] - one[i]) for i in one)
    assert worst <= TOLERANCE, (worst, two, one)
    for a, b in zip(log['eval_steps'], run_logs(root / 'single')[0]['eval_steps']):
        assert a['iter'] == b['iter'] and a['val_loss'] == pytest.approx(b['val_loss'], abs=1e-5)


def test_a_killed_node_worker_is_restarted_and_the_pair_resumes_exactly(runs):
    # torchrun restarts the workers of both nodes: they must meet again (not in the dead ones' store keys, see
    # process_group.meeting_prefix) and resume from the checkpoint as if nothing had happened
    root, launches = runs
    restart, out = launches['restart'], root / 'restart'
    assert restart.wait() == [0, 0], restart.tails()
    assert (root / 'killed').read_text() == 'ckpt_4.pt', restart.tails()  # rank 1 was killed after iteration 4
    assert torch.load(out / 'ckpt_8.pt', weights_only=True)['iter_num'] == 8
    logs = run_logs(out)
    assert [log['startup_info']['resumed_from'] for log in logs] == [None, {'iter': 4}]
    assert [e['iter'] for e in logs[1]['training_iterations']] == [5, 6, 7, 8]
    assert launches['plain'].wait() == [0, 0], launches['plain'].tails()
    assert iteration_losses(out) == iteration_losses(root / 'plain')  # bit-exact, the resumed iterations too


def test_eval_py_on_two_nodes_gives_one_process_results(runs):
    root, launches = runs
    assert launches['eval'].wait() == [0, 0], launches['eval'].tails()
    one = json.loads((root / 'eval_single' / 'eval_8.json').read_text())
    two = json.loads((root / 'eval_two' / 'eval_8.json').read_text())
    assert one['_run']['world_size'] == 1 and two['_run']['world_size'] == 2
    for task in ITEMS:  # 5 items: 3 on rank 0, 2 on rank 1, summed
        assert one[task]['n'] == two[task]['n'] == 5
        for key in ('acc', 'acc_norm', 'perplexity'):
            assert two[task].get(key) == pytest.approx(one[task].get(key), rel=1e-6), (task, key)


def test_ranks_meet_under_a_fresh_prefix_past_a_dead_rank_0s_number():
    # an earlier start's rank 0 published number 1 and died: late and early ranks all meet under the new number
    import threading
    import time
    from datetime import timedelta
    import torch.distributed as dist
    import process_group
    server = dist.TCPStore('127.0.0.1', 0, None, True, timeout=timedelta(seconds=30), wait_for_workers=False)
    server.add('meeting/number', 1)
    server.set('meeting/rank0', '1')
    met = {}

    def rank(r, delay):
        time.sleep(delay)
        store = server if r == 0 else dist.TCPStore('127.0.0.1', server.port, None, False,
                                                    timeout=timedelta(seconds=30))
        met[r] = process_group.meeting_prefix(store, r, 4)
    threads = [threading.Thread(target=rank, args=a) for a in [(0, 0.5), (1, 0), (2, 0.2), (3, 1.0)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(met) == 4 and len(set(met.values())) == 1 and met[0] != 'meeting/1/', met
    assert process_group.meeting_prefix(server, 0, 1) not in met.values()  # the next start: a new prefix

"""
The CPU speedrun against nanoGPT's own CPU recipe, side by side: wall time start to finish to a val loss.

    python bench/speedrun.py --nanogpt /path/to/nanoGPT --input ../shared/data/tinyshakespeare.txt --seeds 3

For each seed it runs nanoGPT's train.py with the CPU recipe of nanoGPT's README (character Shakespeare, 4 layers,
4 heads, 128 wide, block 64, batch 12, 2000 iterations, no dropout, no compile) and then
`train.py config/speedrun_shakespeare_cpu.py --seed=<seed>`, one after the other, so a machine whose speed drifts
over minutes slows both alike. Each run is timed as a user would time it: from starting the process to its exit,
start-up, evaluations and checkpoints included. Reports each pair's times, final val losses and ratio, and the
worst of each (the claim is the worst ratio, and every run's val loss at or under --target). nanoGPT fixes its
seed (1337), so its runs differ only in time. Writes bench/results/speedrun_<stamp>.json.

--nanogpt DIR      a checkout of nanoGPT (its data/shakespeare_char is prepared from --input if it is not yet)
--input FILE       Tiny Shakespeare (input.txt), for nanoGPT's prepare and ours
--seeds N | A,B    our seeds: 1..N, or the list (default 3)
--config FILE      our config (default config/speedrun_shakespeare_cpu.py); any other --key=value goes to it
--target LOSS      the val loss both must reach (default 1.88)
--results_dir DIR  where the record goes (default bench/results)
--work_dir DIR     where the runs go (default a new temp folder); their checkpoints are removed once read, their
                   console logs and our run logs kept
"""
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import files  # noqa: E402
import runlog  # noqa: E402
from errors import die  # noqa: E402

NANOGPT_RECIPE = ['config/train_shakespeare_char.py', '--device=cpu', '--compile=False', '--eval_iters=20',
                  '--log_interval=1', '--block_size=64', '--batch_size=12', '--n_layer=4', '--n_head=4',
                  '--n_embd=128', '--max_iters=2000', '--lr_decay_iters=2000', '--dropout=0.0']


def timed(cmd, cwd, log_path):
    """Wall seconds from start to exit; the output goes to log_path. A failed run stops the benchmark."""
    start = time.perf_counter()
    with open(log_path, 'w') as log:
        status = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if status != 0:
        die(f"{' '.join(cmd)} exited with {status}; its output: {log_path}", 1)
    return seconds


def nanogpt_val_loss(log_path):
    """The last 'step N: train loss X, val loss Y' line of nanoGPT's output."""
    with open(log_path) as f:
        losses = re.findall(r'^step \d+: train loss [\d.]+, val loss ([\d.]+)', f.read(), re.M)
    if not losses:
        die(f"no val loss in nanoGPT's output {log_path}", 1)
    return float(losses[-1])


def our_run(out_dir):
    """(final val loss, the config the run used) from our run log."""
    log = runlog.load_all(out_dir)[-1]  # this run's (a reused --work_dir may hold older ones)
    if not log['eval_steps']:
        die(f"no evaluation in {out_dir}'s run log (eval_iters=0?): the speedrun needs a final val loss", 1)
    return log['eval_steps'][-1]['val_loss'], log['config']


def run_or_die(cmd, cwd):
    result = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ['(no output)'])[-1]
        die(f"{' '.join(cmd)} in {cwd} exited with {result.returncode}: {last}", 1)


def remove_checkpoints(out_dir):  # a 3-seed run would leave ~66 MB of checkpoints nobody reads
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        if name.endswith('.pt'):
            os.remove(os.path.join(out_dir, name))


def parse(argv):
    options = {'nanogpt': None, 'input': None, 'seeds': '3', 'config': 'config/speedrun_shakespeare_cpu.py',
               'target': '1.88', 'results_dir': os.path.join(ROOT, 'bench', 'results'), 'work_dir': None}
    overrides = []
    args = iter(argv)
    for arg in args:
        key, eq, value = arg[2:].partition('=') if arg.startswith('--') else ('', '', '')
        if key in options:
            options[key] = value if eq else next(args, None)
            if options[key] is None:
                die(f"{arg} needs a value")
        elif key and eq:
            overrides.append(arg)
        else:
            die(f"unknown argument {arg!r}; allowed: --nanogpt DIR, --input FILE, --seeds N, --config FILE, "
                f"--target LOSS, --results_dir DIR, --work_dir DIR, --key=value for train.py")
    if not options['nanogpt'] or not os.path.isfile(os.path.join(options['nanogpt'], 'train.py')):
        die(f"--nanogpt={options['nanogpt']}: give a nanoGPT checkout (a folder holding its train.py)")
    if not options['input'] or not os.path.isfile(options['input']):
        die(f"--input={options['input']}: no such file (Tiny Shakespeare's input.txt)")
    seeds = options['seeds']
    try:
        options['seeds'] = [int(s) for s in seeds.split(',') if s] if ',' in seeds else list(range(1, int(seeds) + 1))
        options['target'] = float(options['target'])
    except ValueError:
        die(f"--seeds={seeds!r} or --target={options['target']!r} is not a number")
    if not options['seeds'] or min(options['seeds']) < 0:
        die(f"--seeds={seeds!r}: give a count of 1 or more, or a list of seeds (0 or more)")
    if not os.path.isdir(os.path.join(options['nanogpt'], 'data', 'shakespeare_char')):
        die(f"--nanogpt={options['nanogpt']}: no data/shakespeare_char folder there (nanoGPT's prepare script)")
    return options, overrides


def main(argv):
    options, overrides = parse(argv)
    nanogpt, text = os.path.abspath(options['nanogpt']), os.path.abspath(options['input'])
    nanogpt_data = os.path.join(nanogpt, 'data', 'shakespeare_char')
    if not os.path.isfile(os.path.join(nanogpt_data, 'train.bin')):  # its prepare downloads only without input.txt
        shutil.copyfile(text, os.path.join(nanogpt_data, 'input.txt'))
        run_or_die([sys.executable, 'prepare.py'], nanogpt_data)
    ours_data = os.path.join(ROOT, 'data', 'shakespeare_char')
    if not any(o.startswith('--data_dir=') for o in overrides) and not os.path.isfile(os.path.join(ours_data,
                                                                                                      'train.bin')):
        run_or_die([sys.executable, 'prepare.py', '--input', text], ours_data)
    work = options['work_dir'] or tempfile.mkdtemp(prefix='speedrun_')
    os.makedirs(work, exist_ok=True)
    pairs, config = [], None
    for seed in options['seeds']:
        out = os.path.join(work, f'nanogpt_{seed}')
        nano_s = timed([sys.executable, 'train.py', *NANOGPT_RECIPE, f'--out_dir={out}'], nanogpt, out + '.log')
        nano_loss = nanogpt_val_loss(out + '.log')
        remove_checkpoints(out)
        out = os.path.join(work, f'ours_{seed}')
        ours_s = timed([sys.executable, 'train.py', options['config'], f'--seed={seed}', f'--out_dir={out}',
                        '--overwrite=True', *overrides], ROOT, out + '.log')
        ours_loss, config = our_run(out)
        remove_checkpoints(out)
        pairs.append({'seed': seed, 'nanogpt_s': round(nano_s, 3), 'nanogpt_val_loss': nano_loss,
                      'ours_s': round(ours_s, 3), 'ours_val_loss': ours_loss, 'ratio': round(ours_s / nano_s, 3)})
        print(f"seed {seed}: nanoGPT {nano_s:.1f} s to val {nano_loss:.4f}, ours {ours_s:.1f} s to val "
              f"{ours_loss:.4f}: ratio {ours_s / nano_s:.3f}", flush=True)
    worst = {'ratio': max(p['ratio'] for p in pairs), 'ours_val_loss': max(p['ours_val_loss'] for p in pairs),
             'nanogpt_val_loss': max(p['nanogpt_val_loss'] for p in pairs)}
    reached = worst['ours_val_loss'] <= options['target']
    print(f"worst ratio {worst['ratio']:.3f}; worst val loss: ours {worst['ours_val_loss']:.4f}, nanoGPT "
          f"{worst['nanogpt_val_loss']:.4f} (target {options['target']}: {'reached' if reached else 'MISSED'} by "
          f"every run of ours)")
    import monitor  # the commit with its dirty flag, as every run log has it
    info = monitor.reproducibility_info('cpu')
    nanogpt_commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=nanogpt, capture_output=True,
                                    text=True)
    record = {'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'machine': platform.processor() or platform.machine(),
              'cpus': os.cpu_count(), 'torch': info['versions']['torch'], 'commit': info['git_commit'],
              'dirty': info['git_dirty'], 'nanogpt_commit': nanogpt_commit.stdout.strip() or None,
              'config': options['config'], 'overrides': overrides, 'resolved_config': config,
              'nanogpt_recipe': NANOGPT_RECIPE, 'target': options['target'], 'pairs': pairs, 'worst': worst,
              'target_reached': reached, 'logs': work}
    os.makedirs(options['results_dir'], exist_ok=True)
    path = os.path.join(options['results_dir'], f"speedrun_{time.strftime('%Y%m%d_%H%M%S')}.json")
    files.write_json(path, record)
    print(f"wrote {path} (run logs in {work})")
    return 0 if reached else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

"""
Which component helps, beyond seed noise? Train a baseline and one-switch variants of it, each with several
seeds, under one budget, and report which difference is real.

    python bench/ablate.py config/train_shakespeare_char_cpu.py \\
        --vary position_encoding=rope normalization=rmsnorm ffn_type=swiglu --seeds 3 --max_iters=600 --jobs 2
    python bench/ablate.py config/full_gpt2_124m.py --sweep my_sweep.py --seeds 3 --budget flops --emit slurm

--vary KEY=VALUE ...   one variant per item, each changing that one setting of the baseline
--sweep FILE           a Python file defining VARIANTS = [{'name': ..., 'key': value, ...}, ...]
--seeds N | A,B,C      each variant once per seed (1..N, or the list; '7,' is seed 7 alone); the seed sets the
                       initial weights, data order and dropout. 1 (default): one run per variant with the config's
                       seed, no intervals
--budget B             tokens (default: every run trains the baseline's tokens) | flops (the baseline's training
                       FLOPs) | time (the same wall time: give --max_time=SECONDS; the schedule follows max_iters).
                       tokens, flops: a variant's max_iters, warmup_iters and lr_decay_iters (if set) are the
                       baseline's times its tokens (FLOPs) per iteration over the variant's, as a one-step probe of
                       train.py counts them (tokens probes only when a variant changes batch_size, block_size or
                       gradient_accumulation_steps); a variant that sets max_iters is refused
--jobs K               K trainings at once: each on its own GPU if there are several, else the CPU cores shared out
--emit slurm           write a job-array script (one run per task) and the report step, instead of running
--report               only write the report from the runs already finished
--format md|json       the report's format (comparison.md or comparison.json)
--out_root DIR         where the runs go (default ablations/): DIR/<variant>[/seed<s>]; the report goes there too
--dry_run              print the commands instead of running them
Any other --key=value goes to every run of train.py. Rerunning skips the finished runs and resumes interrupted
ones from their checkpoints; a failed run is reported and does not stop the others.
"""
import json
import os
import runpy
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import ablate_report  # noqa: E402  (beside this script: its folder is on sys.path)
import compare  # noqa: E402
import downstream  # noqa: E402
from errors import die  # noqa: E402
import files  # noqa: E402
import runlog  # noqa: E402

FINISHED = ('max_iters', 'max_time', 'target_val_loss')  # stop reasons of a run that did its whole budget
TOKENS_PER_ITER = ('batch_size', 'block_size', 'gradient_accumulation_steps')  # train.py's tokens_per_iter
OPTIONS = {'--seeds': '1', '--budget': 'tokens', '--jobs': '1', '--emit': '', '--format': 'md', '--out_root': 'ablations'}


def parse(argv):
    configs, common, variants, flags = [], [], [], {'dry_run': False, 'report': False}
    options = dict(OPTIONS)
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition('=')
        if arg == '--vary':
            i += 1
            while i < len(argv) and not argv[i].startswith('--'):
                name, eq, val = argv[i].partition('=')
                if not eq or not name:
                    die(f"--vary {argv[i]}: expected KEY=VALUE")
                variants.append({'name': argv[i], name: val})
                i += 1
            continue
        if key == '--sweep':
            path = value if eq else (argv[i + 1] if i + 1 < len(argv) else '')
            if not os.path.isfile(path):
                die("--sweep needs a Python file that defines VARIANTS")
            found = runpy.run_path(path).get('VARIANTS')
            if not isinstance(found, list) or not all(isinstance(v, dict) and v.get('name') for v in found):
                die(f"{path} must define VARIANTS = [{{'name': ..., 'key': value}}, ...]")
            variants += found
            i += 1 if eq else 2
            continue
        if key in OPTIONS:
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith('--'):
                    die(f"{key} needs a value")
                value = argv[i + 1]
                i += 1
            options[key] = value
        elif arg in ('--dry_run', '--report'):
            flags[arg[2:]] = True
        elif arg.startswith('--'):
            common.append(arg)
        elif not os.path.isfile(arg):
            die(f"config file not found: {arg}")
        else:
            configs.append(arg)
        i += 1
    if not variants:
        die("nothing to ablate: give --vary KEY=VALUE ... or --sweep FILE")
    names = [v['name'] for v in variants]
    if len(set(names)) != len(names) or 'baseline' in names:
        die(f"variant names must be unique and not 'baseline': {names}")
    seeds = options['--seeds']
    try:
        seeds = [int(s) for s in seeds.split(',') if s] if ',' in seeds else list(range(1, int(seeds) + 1))
    except ValueError:
        die(f"--seeds {options['--seeds']}: expected a count (3) or a list (1,2,3)")
    if not seeds or len(set(seeds)) != len(seeds):
        die(f"--seeds {options['--seeds']}: expected a positive count or distinct seeds")
    if options['--budget'] not in ablate_report.BUDGETS:
        die(f"--budget {options['--budget']} is invalid; allowed: {', '.join(ablate_report.BUDGETS)}")
    if options['--budget'] == 'time' and not any(a.startswith('--max_time=') for a in common):
        die("--budget time needs --max_time=SECONDS (each run's wall time)")
    if not options['--jobs'].isdigit() or int(options['--jobs']) < 1:
        die(f"--jobs {options['--jobs']}: expected a positive integer")
    if options['--emit'] not in ('', 'slurm'):
        die(f"--emit {options['--emit']} is invalid; allowed: slurm")
    if options['--format'] not in ('md', 'json'):
        die(f"--format {options['--format']} is invalid; allowed: md, json")
    # one seed given as a count keeps the single-run layout and the config's own seed
    one_run = options['--seeds'] == '1'
    return dict(configs=configs, common=common, variants=variants, seeds=[None] if one_run else seeds,
                budget=options['--budget'], jobs=int(options['--jobs']), emit=options['--emit'],
                form=options['--format'], out_root=os.path.abspath(options['--out_root']), **flags)


def train_argv(configs, common, changes, out_dir, seed=None):
    """train.py's command line; the variant's settings come after the common ones, so they win."""
    return [sys.executable, os.path.join(ROOT, 'train.py'), *configs, *common,
            *[f'--{k}={v}' for k, v in changes.items()], *([f'--seed={seed}'] if seed is not None else []),
            f'--out_dir={out_dir}']


def probe(configs, common, changes, cache_path):
    """One training step of a variant in a scratch folder: {'flops_per_iter', 'tokens_per_iter', 'parameters',
    'config': its schedule} as train.py counts them, or the line it failed with; kept in cache_path so that a rerun
    need not probe again."""
    key = shlex.join(train_argv(configs, common, changes, ''))
    try:
        with open(cache_path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache.get(key), dict) and 'parameters' in cache[key]:  # an entry of another layout is probed again
        return cache[key]
    with tempfile.TemporaryDirectory() as scratch:
        cmd = train_argv(configs, common, changes, scratch) + ['--max_time=1e-9', '--eval_iters=0', '--eval_tasks=',
                                                                '--save_checkpoints=False', '--progress=False']
        done = subprocess.run(cmd, capture_output=True, text=True)  # here: relative paths mean what they say
        if done.returncode != 0:
            return (done.stderr.strip().splitlines() or [f'exit status {done.returncode}'])[-1].removeprefix('error: ')
        [log] = runlog.load_all(scratch)
    info = log['startup_info']
    tokens = info['training']['tokens_per_iter']  # gradient_accumulation_steps * batch_size * block_size
    cache[key] = found = {'flops_per_iter': info['performance']['flops_per_token'] * tokens, 'tokens_per_iter': tokens,
                          'parameters': info['parameters']['total'],
                          'config': {k: log['config'][k] for k in ('max_iters', 'warmup_iters', 'lr_decay_iters')}}
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    files.write_json(cache_path, cache)
    return found


def plan(args, baseline_iters=None):
    """(variant names, runs): runs are dicts with variant, seed, out_dir and argv, in the order to run them (and
    'error' where the variant's probe failed: run without its budget it would compare nothing, so it is not run).
    Under a tokens (FLOPs) budget a variant's schedule is the baseline's in iterations times the baseline's tokens
    (FLOPs) per iteration over the variant's: every run trains the baseline's tokens (FLOPs). baseline_iters, if
    given, is the baseline's max_iters instead of the config's (bench/scaling.py sets it per model size)."""
    variants = [('baseline', {})] + [(v['name'], {k: val for k, val in v.items() if k != 'name'})
                                     for v in args['variants']]
    budget = args['budget']
    for name, changes in variants:
        if budget in ('tokens', 'flops') and 'max_iters' in changes:
            die(f"variant {name} sets max_iters, which --budget {budget} derives from the baseline's; give "
                f"--max_iters to every run, or use --budget time")
    # train.py's tokens per iteration: gradient_accumulation_steps * batch_size * block_size (the accumulation
    # steps are global, shared out over the ranks); a sweep that changes none of them trains equal tokens as it is
    matched = budget == 'flops' or budget == 'tokens' and any(k in TOKENS_PER_ITER for _, c in variants for k in c)
    unplanned = {}
    if matched or baseline_iters is not None:
        figure = 'flops_per_iter' if budget == 'flops' else 'tokens_per_iter'
        cache = os.path.join(args['out_root'], 'probes.json')
        probes = {name: probe(args['configs'], args['common'], changes, cache) for name, changes in variants
                  if matched or name == 'baseline'}
        if isinstance(probes['baseline'], str):
            die(f"the baseline does not start: {probes['baseline']}")
        base = probes['baseline']
        stretch = 1.0 if baseline_iters is None else baseline_iters / base['config']['max_iters']
        for name, changes in variants:
            if isinstance(probes.get(name), str):
                unplanned[name] = f"not run: its one-step probe of train.py failed: {probes[name]}"
                continue
            ratio = stretch * (base[figure] / probes[name][figure] if matched else 1.0)
            changes['max_iters'] = max(1, round(base['config']['max_iters'] * ratio))
            # warmup and decay keep their share of the run (a decay of None ends with it); a variant's own value wins
            for key in ('warmup_iters', 'lr_decay_iters'):
                if key not in changes and base['config'][key] is not None:
                    changes[key] = max(1 if key == 'lr_decay_iters' else 0, round(base['config'][key] * ratio))
    runs = []
    for seed in args['seeds']:  # seed by seed: a partial sweep already has paired runs to compare
        for name, changes in variants:
            out_dir = os.path.join(args['out_root'], name.replace('/', '_'), *([f'seed{seed}'] if seed is not None else []))
            runs.append({'variant': name, 'seed': seed, 'out_dir': out_dir,
                         'argv': train_argv(args['configs'], args['common'], changes, out_dir, seed) + ['--init_from=auto'],
                         **({'error': unplanned[name]} if name in unplanned else {})})
    return [name for name, _ in variants], runs


def finished(out_dir):
    try:
        logs = runlog.load_all(out_dir)
    except (OSError, ValueError):
        return False
    return bool(logs) and logs[-1]['summary'].get('stop_reason') in FINISHED


def load(out_dir):
    """What the report needs of one finished run: compare.py's record of it (every log of a resumed run merged)
    plus its budget in iterations, tokens and training FLOPs."""
    run = compare.load_run(out_dir)
    info = runlog.load_all(out_dir)[-1]
    tokens_per_iter = info['startup_info']['training']['tokens_per_iter']
    iterations = info['summary'].get('iterations') or (run['iterations'][-1]['iter'] if run['iterations'] else 0)
    return {'out_dir': out_dir, 'log_lines': run['iterations'], 'evals': run['evals'], 'iterations': iterations,
            'tokens': iterations * tokens_per_iter, 'train_flops': iterations * tokens_per_iter * run['flops_per_token'],
            'tokens_per_iter': tokens_per_iter, 'flops_per_token': run['flops_per_token'],
            'tokens_per_sec': run['tokens_per_sec'], 'wall_time_s': run['wall_time_s'],
            'downstream': {t: run[t] for t in downstream.TASKS if t in run}}


def resources(jobs):
    """One environment per job slot: its own GPU where there are several, else a share of the CPU cores (or the
    fewer if OMP_NUM_THREADS says so: on a shared machine one thread per run can be several times faster than two)."""
    try:
        import torch
        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    if gpus > 1:
        return [{'CUDA_VISIBLE_DEVICES': str(slot % gpus)} for slot in range(jobs)]
    share = max(1, (os.cpu_count() or 1) // jobs)
    limit = os.environ.get('OMP_NUM_THREADS', '')  # a cap (a job script's export must not oversubscribe the jobs)
    threads = str(min(share, int(limit)) if limit.isdigit() and int(limit) > 0 else share)
    return [{'OMP_NUM_THREADS': threads, 'MKL_NUM_THREADS': threads} for _ in range(jobs)]


def run_label(run):
    return run['variant'] + (f" seed {run['seed']}" if run['seed'] is not None else '')


def execute(runs, jobs):
    """Run the runs, `jobs` at a time; returns {out_dir: error message} for those that failed."""
    pending, active, errors, slots = list(runs), {}, {}, resources(jobs)
    free = list(range(jobs))
    total, done = len(runs), 0
    while pending or active:
        while pending and free:
            run = pending.pop(0)
            slot = free.pop(0)
            os.makedirs(run['out_dir'], exist_ok=True)
            if not any(n.startswith('ckpt_') for n in os.listdir(run['out_dir'])):
                for name in os.listdir(run['out_dir']):  # an unfinished start that left no checkpoint: begin clean
                    if name.startswith('run_') or name == 'metrics.csv':
                        os.remove(os.path.join(run['out_dir'], name))
            with open(os.path.join(run['out_dir'], 'command.txt'), 'w') as f:
                f.write(shlex.join(run['argv']) + '\n')
            log = open(os.path.join(run['out_dir'], 'train.log'), 'a')
            process = subprocess.Popen(run['argv'] + ['--progress=False'], stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, **slots[slot], 'PYTHONUNBUFFERED': '1'})
            active[process] = (run, slot, log, time.time())
        time.sleep(0.2)
        for process in [p for p in active if p.poll() is not None]:
            run, slot, log, started = active.pop(process)
            log.close()
            free.append(slot)
            done += 1
            label = run_label(run)
            if process.returncode == 0:
                print(f"[{done}/{total}] {label}: done in {time.time() - started:.0f} s", flush=True)
                continue
            with open(os.path.join(run['out_dir'], 'train.log')) as f:
                lines = [line.strip() for line in f if line.strip()]
            why = next((line.removeprefix('error: ') for line in reversed(lines) if line.startswith('error: ')),
                       lines[-1] if lines else '')
            errors[run['out_dir']] = f"exit status {process.returncode}: {why}"
            print(f"[{done}/{total}] {label}: FAILED ({errors[run['out_dir']]}); log: {run['out_dir']}/train.log",
                  flush=True)
    return errors


def run_sweep(runs, jobs, report_only=False):
    """Run the runs not finished yet, `jobs` at a time (none with report_only), and return each run's record
    (load()) or {'error': ...}, in the order of runs. A folder holding another command's run is refused."""
    for run in runs:  # a folder keeps the command that made it: another sweep's runs are never reused
        recorded = os.path.join(run['out_dir'], 'command.txt')
        if os.path.isfile(recorded) and open(recorded).read().strip() != shlex.join(run['argv']):
            die(f"{run['out_dir']} holds a run of another command (see its command.txt): use another --out_root "
                f"or remove that folder")
    errors = {run['out_dir']: run['error'] for run in runs if 'error' in run}
    for run in runs:
        if 'error' in run:
            print(f"{run_label(run)}: FAILED ({run['error']})")
    if not report_only:
        todo = [run for run in runs if 'error' not in run and not finished(run['out_dir'])]
        if len(todo) < len(runs) - len(errors):
            print(f"{len(runs) - len(errors) - len(todo)} of {len(runs)} runs already finished: skipped")
        errors.update(execute(todo, jobs))
    return [{'error': errors[run['out_dir']]} if run['out_dir'] in errors else
            load(run['out_dir']) if finished(run['out_dir']) else {'error': 'not finished'} for run in runs]


def without_option(argv, option):
    """argv less `option VALUE` (or `option=VALUE`)."""
    at = next((i for i, a in enumerate(argv) if a == option or a.startswith(option + '=')), None)
    return argv if at is None else argv[:at] + argv[at + (1 if '=' in argv[at] else 2):]


def emit_slurm(runs, out_root, report_argv, job_name='ablate'):
    """A job array with one run per task, a report job (report_argv) after it, and submit.sh chaining them; returns
    (the folder, the number of tasks). Runs that cannot be planned (an 'error') are left out, saying why."""
    for run in runs:
        if 'error' in run:
            print(f"{run_label(run)}: left out ({run['error']})")
    runs = [run for run in runs if 'error' not in run]
    folder = os.path.join(out_root, 'slurm')
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'runs.txt'), 'w') as f:
        f.writelines(shlex.join(run['argv']) + '\n' for run in runs)
    report = shlex.join(report_argv)
    array = f"""#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --array=0-{len(runs) - 1}
#SBATCH --output={os.path.abspath(folder)}/run_%a.out
# one run of train.py per task, from the folder ablate.py ran in: line SLURM_ARRAY_TASK_ID + 1 of runs.txt
# (add --partition, --gpus, --time here)
cd {shlex.quote(os.getcwd())}
eval "$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(os.path.abspath(os.path.join(folder, 'runs.txt')))})"
"""
    after = f"""#!/bin/bash
#SBATCH --job-name={job_name}-report
#SBATCH --output={os.path.abspath(folder)}/report.out
# after the array: the report from the runs that finished (failed ones are listed in it)
cd {shlex.quote(os.getcwd())}
{report}
"""
    submit = f"""#!/bin/bash
# submit the runs, then the report once every task has ended (afterany: failed tasks do not hold it back)
set -e
cd {shlex.quote(os.path.abspath(folder))}
array=$(sbatch --parsable array.sbatch)
sbatch --dependency=afterany:${{array%%;*}} report.sbatch
"""
    for name, text in (('array.sbatch', array), ('report.sbatch', after), ('submit.sh', submit)):
        with open(os.path.join(folder, name), 'w') as f:
            f.write(text)
    os.chmod(os.path.join(folder, 'submit.sh'), 0o755)
    return folder, len(runs)


def main(argv):
    args = parse(argv)
    variants, runs = plan(args)
    if args['dry_run']:
        for run in runs:
            print(f"# {run_label(run)}: {run['error']}" if 'error' in run else shlex.join(run['argv']))
        return 0
    if args['emit'] == 'slurm':  # the report step reruns the command without --emit
        folder, tasks = emit_slurm(runs, args['out_root'],
                                   [sys.executable, os.path.abspath(__file__), *without_option(argv, '--emit'), '--report'])
        print(f"wrote {folder}/array.sbatch ({tasks} tasks), report.sbatch and submit.sh; run: bash {folder}/submit.sh")
        return 0
    records = run_sweep(runs, args['jobs'], args['report'])
    results = {(run['variant'], run['seed']): record for run, record in zip(runs, records)}
    title = 'Ablation of ' + (', '.join(os.path.basename(c) for c in args['configs']) or 'the defaults')
    path, text = ablate_report.write(args['out_root'], title, args['budget'], args['seeds'], variants, results,
                                     args['form'])
    print(text)
    print(f"wrote {path}")
    return 1 if any('error' in r for r in results.values()) else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

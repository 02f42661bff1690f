"""
Does the win hold at scale? Train the baseline and each variant at several model sizes, each size for a compute
budget proportional to it, over seeds; fit each variant's final val loss against training FLOPs and project the
difference to 10x and 100x the largest compute, with bootstrap intervals over seeds.

    python bench/scaling.py config/train_shakespeare_char_cpu.py --sizes 2x64 3x96 4x128 \\
        --vary position_encoding=rope --seeds 2 --tokens_per_param 20 --jobs 1

--sizes LxD[xH] ...    three or more model sizes: n_layer L, n_embd D and n_head H (else the config's); every other
                       setting, the learning rate and batch included, is the config's at every size
--tokens_per_param R   the baseline trains R tokens per parameter at each size (20, Chinchilla's; parameters as the run
                       log counts them, embeddings included): max_iters = R x parameters / tokens per iteration, and
                       warmup_iters and lr_decay_iters keep their share of the config's max_iters
--budget flops|tokens  within a size every variant trains the baseline's training FLOPs (default: the comparison is
                       compute-matched) or its tokens (bench/ablate.py's rules)
--fit auto|power|loglinear   L(C) = E + A*C^-alpha (power) or L(C) = a + b*log10(C) (loglinear), per variant; auto:
                       power from 4 sizes up, else loglinear (three compute points cannot pin down E)
Every other option is bench/ablate.py's: --vary KEY=VALUE ... | --sweep FILE, --seeds, --jobs, --emit slurm,
--report, --format md|json, --dry_run, --out_root (default scaling/), and --key=value for every run. Runs go to
OUT_ROOT/<size>/<variant>/seed<s>, the report to OUT_ROOT/scaling.md and scaling.png; reruns resume as ablate's do.
"""
import os
import re
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ablate  # noqa: E402  (beside this script: its folder is on sys.path)
import scaling_report  # noqa: E402
from errors import die  # noqa: E402

SIZE_KEYS = ('n_layer', 'n_embd', 'n_head')
OPTIONS = {'--tokens_per_param': '20', '--fit': 'auto', '--budget': 'flops'}
FIT_REASONS = {'power': "the saturating power law, with E the loss no compute removes",
               'loglinear': "three compute points would fit the 3-parameter E + A·C^(-alpha) exactly and leave E "
                            "unpinned; a line in log C has 2 parameters and follows the trend measured, though past "
                            "it the line keeps falling where a power law with E > 0 flattens"}


def parse(argv):
    """scaling.py's own options, then bench/ablate.py's parse of the rest (with scaling's defaults)."""
    sizes, rest, options = [], [], dict(OPTIONS)
    i = 0
    while i < len(argv):
        key, eq, value = argv[i].partition('=')
        if argv[i] == '--sizes':
            i += 1
            while i < len(argv) and not argv[i].startswith('--'):
                sizes.append(argv[i])
                i += 1
            continue
        if key in OPTIONS:
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith('--'):
                    die(f"{key} needs a value")
                i += 1
                value = argv[i]
            options[key] = value
        else:
            rest.append(argv[i])
        i += 1
    if options['--budget'] not in ('flops', 'tokens'):
        die(f"--budget {options['--budget']} is invalid for scaling.py (each size has its compute budget); "
            f"allowed: flops, tokens")
    given = {a.partition('=')[0] for a in rest}
    args = ablate.parse(['--budget', options['--budget']] + (['--out_root', 'scaling'] if '--out_root' not in given
                                                              else []) + rest)
    if len(sizes) < 3:
        die(f"--sizes {' '.join(sizes) or '(none)'}: give 3 or more sizes LxD or LxDxH (n_layer x n_embd [x n_head]), "
            f"e.g. --sizes 2x64 3x96 4x128")
    parsed = []
    for size in sizes:
        match = re.fullmatch(r'([1-9]\d*)x([1-9]\d*)(?:x([1-9]\d*))?', size)
        if not match:
            die(f"--sizes {size}: expected LxD or LxDxH (n_layer x n_embd [x n_head]), e.g. 4x128 or 4x128x4")
        parsed.append({'name': size, **{k: int(v) for k, v in zip(SIZE_KEYS, match.groups()) if v}})
    if len(set(sizes)) != len(sizes):
        die(f"--sizes {' '.join(sizes)}: each size once")
    try:
        tokens_per_param = float(options['--tokens_per_param'])
    except ValueError:
        tokens_per_param = 0.0
    if not tokens_per_param > 0:
        die(f"--tokens_per_param {options['--tokens_per_param']}: expected a positive number, e.g. 20")
    if options['--fit'] not in ('auto', 'power', 'loglinear'):
        die(f"--fit {options['--fit']} is invalid; allowed: auto, power, loglinear")
    set_per_size = [k for k in SIZE_KEYS if any(k in size for size in parsed)]
    for setting in ('max_iters', *set_per_size):  # the sizes and the compute budget are scaling.py's to set
        owner = next((v['name'] for v in args['variants'] if setting in v), None)
        if owner or any(a.startswith(f'--{setting}=') for a in args['common']):
            die(f"{f'variant {owner} sets {setting}' if owner else f'--{setting} given'}: scaling.py sets {setting} "
                f"per size (--sizes, --tokens_per_param)")
    fit = options['--fit'] if options['--fit'] != 'auto' else 'power' if len(sizes) >= 4 else 'loglinear'
    return {**args, 'sizes': parsed, 'tokens_per_param': tokens_per_param, 'fit': fit}


def plan(args):
    """(sizes, variant names, runs): at each size the baseline's max_iters from its parameters (a one-step probe of
    train.py, cached in OUT_ROOT/<size>/probes.json), then bench/ablate.py's plan of that size's runs. Runs are ordered
    seed by seed, so a sweep stopped halfway already has every size once."""
    sizes, runs, variants = [], [], None
    for size in args['sizes']:
        common = args['common'] + [f'--{k}={size[k]}' for k in SIZE_KEYS if k in size]
        root = os.path.join(args['out_root'], size['name'])
        base = ablate.probe(args['configs'], common, {}, os.path.join(root, 'probes.json'))
        if isinstance(base, str):
            die(f"size {size['name']}: the baseline does not start: {base}")
        iterations = max(1, round(args['tokens_per_param'] * base['parameters'] / base['tokens_per_iter']))
        variants, size_runs = ablate.plan({**args, 'common': common, 'out_root': root}, baseline_iters=iterations)
        sizes.append({'name': size['name'], 'parameters': base['parameters'], 'max_iters': iterations})
        runs += [{**run, 'size': size['name']} for run in size_runs]
    order = {seed: i for i, seed in enumerate(args['seeds'])}
    runs.sort(key=lambda run: order[run['seed']])  # stable: sizes, then variants, within a seed
    return sizes, variants, runs


def main(argv):
    started = time.time()
    args = parse(argv)
    sizes, variants, runs = plan(args)
    if args['dry_run']:
        for run in runs:
            print(f"# {run['size']} {ablate.run_label(run)}: {run['error']}" if 'error' in run else shlex.join(run['argv']))
        return 0
    if args['emit'] == 'slurm':  # the report step reruns the command without --emit
        folder, tasks = ablate.emit_slurm(runs, args['out_root'], [sys.executable, os.path.abspath(__file__),
                                                                   *ablate.without_option(argv, '--emit'), '--report'],
                                          job_name='scaling')
        print(f"wrote {folder}/array.sbatch ({tasks} tasks), report.sbatch and submit.sh; run: bash {folder}/submit.sh")
        return 0
    records = ablate.run_sweep(runs, args['jobs'], args['report'])
    results = {(run['size'], run['variant'], run['seed']): record for run, record in zip(runs, records)}
    title = 'Scaling of ' + (', '.join(os.path.basename(c) for c in args['configs']) or 'the defaults')
    setup = {'seeds': args['seeds'], 'budget': args['budget'], 'tokens_per_param': args['tokens_per_param'],
             'fit': args['fit'], 'fit_reason': FIT_REASONS[args['fit']],
             'parameters': {s['name']: s['parameters'] for s in sizes}}
    path, text = scaling_report.write(args['out_root'], title, setup, [s['name'] for s in sizes], variants, results,
                                      args['form'])
    print(text)
    print(f"wrote {path} ({time.time() - started:.0f} s start to finish)")
    return 1 if any('error' in r for r in results.values()) else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

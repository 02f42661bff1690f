"""
Which component helps most? Train a baseline and one-switch variants of it with the same seed and token budget,
one after another, then compare them (bench/compare.py).

    python bench/ablate.py config/train_shakespeare_char_cpu.py \\
        --vary position_encoding=rope normalization=rmsnorm ffn_type=swiglu --max_iters=500
    python bench/ablate.py config/full_gpt2_124m.py --sweep my_sweep.py --dry_run

--vary KEY=VALUE ...  one variant per item, each changing that one setting of the baseline
--sweep FILE          a Python file defining VARIANTS = [{'name': ..., 'key': value, ...}, ...]
--out_root DIR        where the runs go (default ablations/): DIR/baseline, DIR/<variant>
--dry_run             print the commands instead of running them
Any other --key=value goes to every run of train.py.
"""
import os
import runpy
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def die(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse(argv):
    configs, common, variants, out_root, dry_run = [], [], [], 'ablations', False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == '--vary':
            i += 1
            while i < len(argv) and not argv[i].startswith('--'):
                key, eq, value = argv[i].partition('=')
                if not eq or not key:
                    die(f"--vary {argv[i]}: expected KEY=VALUE")
                variants.append({'name': argv[i], key: value})
                i += 1
            continue
        if arg == '--sweep':
            if i + 1 >= len(argv) or not os.path.isfile(argv[i + 1]):
                die("--sweep needs a Python file that defines VARIANTS")
            found = runpy.run_path(argv[i + 1]).get('VARIANTS')
            if not isinstance(found, list) or not all(isinstance(v, dict) and v.get('name') for v in found):
                die(f"{argv[i + 1]} must define VARIANTS = [{{'name': ..., 'key': value}}, ...]")
            variants += found
            i += 2
            continue
        if arg == '--dry_run':
            dry_run = True
        elif arg.startswith('--out_root='):
            out_root = arg.split('=', 1)[1]
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
    return configs, common, variants, out_root, dry_run


def commands(configs, common, variants, out_root):
    """(out_dir, argv) for the baseline and every variant; a variant's settings come last, so they win."""
    runs = [('baseline', {})] + [(v['name'], {k: val for k, val in v.items() if k != 'name'}) for v in variants]
    result = []
    for name, changes in runs:
        out_dir = os.path.join(out_root, name.replace('/', '_'))
        argv = [sys.executable, os.path.join(ROOT, 'train.py'), *configs, *common,
                *[f'--{k}={v}' for k, v in changes.items()], f'--out_dir={out_dir}']
        result.append((out_dir, argv))
    return result


def main(argv):
    configs, common, variants, out_root, dry_run = parse(argv)
    plan = commands(configs, common, variants, out_root)
    if dry_run:
        for _, cmd in plan:
            print(shlex.join(cmd))
        return 0
    for out_dir, cmd in plan:
        print(f"== {out_dir}", flush=True)
        result = subprocess.run(cmd)
        if result.returncode != 0:
            die(f"{out_dir} failed (exit status {result.returncode}); command: {shlex.join(cmd)}")
    return compare.main([d for d, _ in plan] + ['--out', out_root])


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

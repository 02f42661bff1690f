"""
Compare training runs: a table and plots from the JSON logs train.py writes.

    python bench/compare.py out-a out-b out-c
    python bench/compare.py --latest 4 --root runs/ --format md --out comparison/

Table: architecture, parameters, FLOPs/token, best val loss, final train loss, median tokens/s, median MFU,
wall time, and the downstream accuracy (acc_norm, or acc) of the last evaluation that scored tasks (eval_tasks). Plots (with matplotlib): loss against iterations, tokens and wall time, and throughput/MFU bars.
"""
import argparse
import csv
import glob
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import downstream  # noqa: E402
from errors import die  # noqa: E402
import runlog  # noqa: E402

COLUMNS = ['run', 'architecture', 'parameters', 'flops_per_token', 'best_val_loss', 'final_train_loss',
           'tokens_per_sec', 'mfu', 'wall_time_s']


def load_run(run_dir):
    """Every run log in run_dir (a resumed run has several), oldest first, merged into one record: the .json of
    a finished run, the .jsonl of one still going or killed."""
    paths = runlog.log_paths(run_dir)
    if not paths:
        die(f"no run_*.json or run_*.jsonl log in {run_dir}")
    logs = []
    for path in paths:
        try:
            logs.append(runlog.load(path))
        except (OSError, ValueError) as e:
            die(f"cannot read {path}: {e}")
    logs.sort(key=lambda log: log['start_time'])
    iterations = [e for log in logs for e in log['training_iterations']]
    evals = [e for log in logs for e in log['eval_steps'] if 'val_loss' in e]
    info = logs[0]['startup_info']
    timed = sorted(e['tokens_per_sec'] for e in iterations if not e.get('warmup'))
    mfus = sorted(e['mfu'] for e in iterations if not e.get('warmup') and e.get('mfu') is not None)
    return {
        'run': os.path.basename(os.path.normpath(run_dir)),
        'architecture': info['architecture'],
        'parameters': info['parameters']['total'],
        'flops_per_token': info.get('performance', {}).get('flops_per_token'),
        'best_val_loss': min((e['val_loss'] for e in evals), default=None),
        'final_train_loss': iterations[-1]['loss'] if iterations else None,
        'tokens_per_sec': timed[len(timed) // 2] if timed else None,
        'mfu': mfus[len(mfus) // 2] if mfus else None,
        'wall_time_s': sum(log['summary'].get('total_time_s') or 0 for log in logs),
        # downstream accuracy at the last evaluation that scored tasks: acc_norm where the task has it
        **{task: r.get('acc_norm', r['acc'])
           for task, r in next((e['downstream'] for e in reversed(evals) if e.get('downstream')), {}).items()},
        'iterations': iterations, 'evals': evals,
    }


def latest_runs(root, n):
    """The n run folders under root whose newest log is most recent."""
    logs = glob.glob(os.path.join(root, '**', 'run_*.json*'), recursive=True)
    newest = {}
    for path in logs:
        folder = os.path.dirname(path)
        newest[folder] = max(newest.get(folder, 0), os.path.getmtime(path))
    if not newest:
        die(f"no run logs under {root}")
    return sorted(newest, key=newest.get)[-n:]


def fmt(value, column):
    if value is None:
        return '-'
    if column == 'parameters':
        return f'{value / 1e6:.2f}M'
    if column == 'flops_per_token':
        return f'{value / 1e6:.2f}M'
    if column == 'mfu':
        return f'{value:.1%}'
    if column == 'tokens_per_sec':
        return f'{value:,.0f}'
    if column in ('best_val_loss', 'final_train_loss') or column in downstream.TASKS:
        return f'{value:.4f}'
    if column == 'wall_time_s':
        return f'{value:.1f}'
    return str(value)


def render(rows, form):
    tasks = [t for t in downstream.TASKS if any(t in r for r in rows)]  # downstream accuracy columns, if any
    columns = COLUMNS + tasks
    table = [{c: r.get(c) for c in columns} for r in rows]
    if form == 'json':
        return json.dumps(table, indent=1)
    if form == 'csv':
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
        return out.getvalue()
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(fmt(r[c], c) for c in columns) + ' |' for r in table]
    return '\n'.join(lines)


def plot(rows, out_dir):
    """PNG files written into out_dir; returns their paths (none, with a note, without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: tables only (pip install matplotlib for the plots)")
        return []
    paths = []
    for x_key, label, name in (('iter', 'iteration', 'loss_vs_iteration.png'),
                               ('tokens_seen', 'tokens seen', 'loss_vs_tokens.png'),
                               ('time_s', 'wall time (s)', 'loss_vs_time.png')):
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, r in enumerate(rows):
            colour = plt.get_cmap('tab10' if len(rows) <= 10 else 'tab20')(i % 20)  # one colour per run
            if x_key != 'time_s':  # training loss lines carry iterations and tokens, not wall time
                xs = [e[x_key] for e in r['iterations'] if e.get(x_key) is not None]
                ax.plot(xs, [e['loss'] for e in r['iterations'] if e.get(x_key) is not None], color=colour,
                        linewidth=0.8, alpha=0.6)
            tokens_per_iter = (r['iterations'][0]['tokens_seen'] / r['iterations'][0]['iter']) if r['iterations'] else 0
            xs = [e['iter'] * tokens_per_iter if x_key == 'tokens_seen' else e.get(x_key, e['iter']) for e in r['evals']]
            ax.plot(xs, [e['val_loss'] for e in r['evals']], color=colour, linewidth=2, marker='o', label=r['run'])
        ax.set_xlabel(label)
        ax.set_ylabel('loss (val bold, train thin)')
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, name))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r['run'] for r in rows]
    left.bar(names, [r['tokens_per_sec'] or 0 for r in rows])
    left.set_ylabel('tokens/s (median)')
    right.bar(names, [100 * (r['mfu'] or 0) for r in rows], color='tab:orange')
    right.set_ylabel('MFU % (median)')
    for ax in (left, right):
        ax.tick_params(axis='x', rotation=30, labelsize=8)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, 'throughput.png'))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='*', help='run folders (out_dir of train.py)')
    parser.add_argument('--latest', type=int, help='compare the N newest runs under --root instead')
    parser.add_argument('--root', default='.', help='where --latest looks (default: here)')
    parser.add_argument('--format', choices=['md', 'csv', 'json'], default='md')
    parser.add_argument('--out', default='comparison', help='folder for the table and the plots')
    args = parser.parse_args(argv)
    if bool(args.runs) == bool(args.latest):
        die("give run folders or --latest N (not both)")
    run_dirs = latest_runs(args.root, args.latest) if args.latest else args.runs
    for d in run_dirs:
        if not os.path.isdir(d):
            die(f"{d} is not a folder")
    rows = [load_run(d) for d in run_dirs]
    text = render(rows, args.format)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    table_path = os.path.join(args.out, f'comparison.{args.format}')
    with open(table_path, 'w') as f:
        f.write(text + '\n')
    written = [table_path] + plot(rows, args.out)
    print('wrote ' + ', '.join(written))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

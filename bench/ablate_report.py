"""
What an ablation found: per-variant statistics over seeds, each variant's difference to the baseline with a 95%
interval from a paired t-test over seeds (the same seed gives both runs the same data order), the report that
opens with the answer (comparison.md or .json), and the plots. bench/ablate.py calls it; it reads run logs only.
"""
import json
import math
import os
import statistics

import files
from errors import die

TEST_NAME = 'paired t-test over seeds, 95% interval'


def t_critical(degrees_of_freedom):
    """The two-sided 95% critical value of Student's t (12.706 for 1 degree of freedom, 2.042 for 30)."""
    try:
        from scipy import stats
    except ImportError:
        die("the seed statistics need scipy: pip install scipy (or pip install -r requirements-dev.txt)")
    return float(stats.t.ppf(0.975, degrees_of_freedom))


def summarize(values):
    """mean, sample std, and the half-width of the 95% interval of the mean (None for fewer than 2 values)."""
    n = len(values)
    if n == 0:
        return {'n': 0, 'mean': None, 'std': None, 'half_width': None}
    mean = statistics.fmean(values)
    if n < 2:
        return {'n': 1, 'mean': mean, 'std': None, 'half_width': None}
    std = statistics.stdev(values)
    return {'n': n, 'mean': mean, 'std': std, 'half_width': t_critical(n - 1) * std / math.sqrt(n)}


def paired_difference(variant, baseline):
    """variant - baseline over the seeds both have ({seed: value} each): the mean difference, its 95% interval and
    whether the interval excludes zero (the two-sided paired t-test at 5%)."""
    seeds = sorted(set(variant) & set(baseline))
    stats = summarize([variant[s] - baseline[s] for s in seeds])
    hw = stats['half_width']
    stats['significant'] = None if hw is None else (abs(stats['mean']) > hw)
    stats['seeds'] = seeds
    return stats


def final_val_loss(run):
    return run['evals'][-1]['val_loss'] if run['evals'] else None


def aggregate(variants, runs, metric='final_val_loss'):
    """variants: names, baseline first. runs: {(variant, seed): run record or {'error': ...}}.
    Returns one row per variant with the metric's statistics, the paired difference to the baseline and a verdict."""
    def values(name, key):
        return {seed: r[key] for (v, seed), r in runs.items() if v == name and 'error' not in r and r.get(key) is not None}

    for r in runs.values():
        if 'error' not in r:
            r['final_val_loss'] = final_val_loss(r)
    base = values(variants[0], metric)
    rows = []
    for name in variants:
        mine = values(name, metric)
        row = {'variant': name, 'runs': len(mine), 'failed': sorted(s for (v, s), r in runs.items() if v == name and 'error' in r),
               metric: summarize(list(mine.values()))}
        for key in ('iterations', 'tokens', 'train_flops', 'tokens_per_sec', 'wall_time_s'):
            found = list(values(name, key).values())
            row[key] = statistics.fmean(found) if found else None
        tasks = sorted({k for (v, _), r in runs.items() if v == name and 'error' not in r for k in r.get('downstream', {})})
        row['downstream'] = {t: summarize([r['downstream'][t] for (v, _), r in runs.items()
                                            if v == name and 'error' not in r and t in r.get('downstream', {})])
                             for t in tasks}
        if name != variants[0]:
            diff = paired_difference(mine, base)
            row['difference'] = diff
            if diff['n'] == 0:
                row['verdict'] = 'no paired runs'
            elif diff['significant'] is None:
                row['verdict'] = 'one seed: no interval'
            elif not diff['significant']:
                row['verdict'] = 'no difference beyond seed noise'
            else:
                row['verdict'] = 'better' if diff['mean'] < 0 else 'worse'
        rows.append(row)
    return rows


def plus_minus(stats, digits=4):
    if stats['mean'] is None:
        return '-'
    if stats.get('half_width') is None:
        return f"{stats['mean']:+.{digits}f}" if 'significant' in stats else f"{stats['mean']:.{digits}f}"
    sign = '+' if 'significant' in stats else ''
    return f"{stats['mean']:{sign}.{digits}f} ± {stats['half_width']:.{digits}f}"


def answer(rows, seeds):
    """The report's first sentence(s): the best variant that beats the baseline beyond noise, then the rest."""
    over = f"over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    others = rows[1:]
    better = sorted((r for r in others if r.get('verdict') == 'better'), key=lambda r: r['difference']['mean'])
    parts = []
    if better:
        best = better[0]
        parts.append(f"best: {best['variant']}, val loss {plus_minus(best['difference'])} against the baseline {over} "
                     f"({TEST_NAME})")
    elif len(seeds) < 2:
        lowest = min((r for r in others if r.get('difference', {}).get('n')), key=lambda r: r['difference']['mean'],
                     default=None)
        parts.append("one seed per variant: no difference can be told from seed noise (run --seeds 3 or more)"
                     + (f"; lowest val loss: {lowest['variant']} ({plus_minus(lowest['difference'])})" if lowest else ''))
    else:
        parts.append(f"no variant beats the baseline beyond seed noise {over} ({TEST_NAME})")
    for r in others:
        if better and r is better[0] or 'difference' not in r or len(seeds) < 2:
            continue
        if r['verdict'] == 'better':
            parts.append(f"{r['variant']}: also better, {plus_minus(r['difference'])}")
        elif r['verdict'] == 'worse':
            parts.append(f"{r['variant']}: worse, {plus_minus(r['difference'])}")
        else:
            parts.append(f"{r['variant']}: {r['verdict']} ({plus_minus(r['difference'])})")
    failed = [f"{r['variant']} (seeds {', '.join(map(str, r['failed']))})" for r in rows if r['failed']]
    if failed:
        parts.append(f"failed runs: {'; '.join(failed)}")
    return '; '.join(parts) + '.'


BUDGETS = {'tokens': "equal tokens: a variant with more tokens per iteration trains fewer iterations",
           'flops': 'equal training FLOPs: a variant with more FLOPs per token trains fewer iterations',
           'time': 'equal wall time per run (max_time); runs sharing a machine share its speed'}


def markdown(title, budget, seeds, rows, plots):
    seed_text = ', '.join("the config's" if s is None else str(s) for s in seeds)
    lines = [f"# {title}", '', f"**Answer:** {answer(rows, seeds)}", '',
             f"Budget: {BUDGETS[budget]}. Seeds: {seed_text}. Metric: validation loss at the end of "
             f"each run; intervals: {TEST_NAME}" + (' (need 2 or more seeds)' if len(seeds) < 2 else
                                                      '; each variant is tested on its own at 5%, so among many '
                                                      'variants about 1 in 20 verdicts may be a false alarm') + '.', '']
    tasks = sorted({t for r in rows for t in r['downstream']})
    head = ['variant', 'runs', 'val loss (mean ± 95%)', 'std', 'Δ vs baseline', 'verdict', 'iterations', 'tokens',
            'train FLOPs', 'tokens/s', 'wall s'] + tasks
    lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        m = r['final_val_loss']
        cells = [r['variant'], f"{r['runs']}" + (f" ({len(r['failed'])} failed)" if r['failed'] else ''), plus_minus(m),
                 f"{m['std']:.4f}" if m['std'] is not None else '-',
                 plus_minus(r['difference']) if 'difference' in r else '(baseline)', r.get('verdict', ''),
                 f"{r['iterations']:.0f}" if r['iterations'] is not None else '-',
                 f"{r['tokens']:,.0f}" if r['tokens'] is not None else '-',
                 f"{r['train_flops']:.3e}" if r['train_flops'] is not None else '-',
                 f"{r['tokens_per_sec']:,.0f}" if r['tokens_per_sec'] is not None else '-',
                 f"{r['wall_time_s']:.1f}" if r['wall_time_s'] is not None else '-']
        cells += [plus_minus(r['downstream'][t]) if t in r['downstream'] else '-' for t in tasks]
        lines.append('| ' + ' | '.join(cells) + ' |')
    if plots:
        lines += [''] + [f"![{os.path.basename(p)[:-4]}]({os.path.basename(p)})" for p in plots]
    return '\n'.join(lines) + '\n'


def mean_curve(curves):
    """Mean and spread (min, max) over seeds of curves [[(x, y), ...], ...] on the x values all of them share."""
    common = sorted(set.intersection(*(set(x for x, _ in c) for c in curves))) if curves else []
    points = [[dict(c)[x] for c in curves] for x in common]
    return common, [statistics.fmean(p) for p in points], [min(p) for p in points], [max(p) for p in points]


def plot(variants, runs, rows, out_dir):
    """PNG files (none, with a note, without matplotlib): the losses against iterations, tokens, training FLOPs and
    wall time (one colour per variant; train thin, val bold with markers, the seed spread as a band), and the final
    val loss (and downstream accuracy) as bars with 95% error bars."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    colours = plt.get_cmap('tab10' if len(variants) <= 10 else 'tab20')
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    for ax, (x_key, label) in zip(axes.flat, (('iter', 'iteration'), ('tokens', 'tokens'),
                                              ('flops', 'training FLOPs'), ('time_s', 'wall time (s)'))):
        for i, name in enumerate(variants):
            mine = [r for (v, _), r in runs.items() if v == name and 'error' not in r]
            if not mine:
                continue
            colour = colours(i % colours.N)
            if x_key != 'time_s':  # log lines carry iterations (hence tokens and FLOPs), not wall time
                xs, ys, lo, hi = mean_curve([[(e['iter'], e['loss']) for e in r['log_lines']] for r in mine])
                scale = 1 if x_key == 'iter' else mine[0]['tokens_per_iter'] * (mine[0]['flops_per_token'] if x_key == 'flops' else 1)
                ax.plot([x * scale for x in xs], ys, color=colour, linewidth=0.8, alpha=0.6)
            curves = [[(e['iter'], e['val_loss']) for e in r['evals']] for r in mine]
            xs, ys, lo, hi = mean_curve(curves)
            if x_key == 'time_s':
                times = mean_curve([[(e['iter'], e.get('time_s', 0.0)) for e in r['evals']] for r in mine])[1]
                xs = times
            elif x_key != 'iter':
                xs = [x * scale for x in xs]
            ax.plot(xs, ys, color=colour, linewidth=2.2, marker='o', markersize=4, label=name)
            if len(mine) > 1:
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.18, linewidth=0)
        ax.set_xlabel(label)
        ax.set_ylabel('loss (val bold, train thin)')
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if labels:  # none when every run failed
        fig.legend(handles, labels, loc='upper center', ncol=min(len(labels), 5), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94 if len(labels) <= 5 else 0.9))
    paths = [os.path.join(out_dir, 'loss_curves.png')]
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    tasks = sorted({t for r in rows for t in r['downstream']})
    # absolute losses carry the seeds' spread; the paired differences are what the verdicts rest on
    panels = [('final_val_loss', 'final val loss'), ('difference', 'val loss - baseline, paired')] + \
        [(t, f'{t} accuracy') for t in tasks]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 0.7 * len(rows) + 3) * len(panels), 4.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        stats = [r['final_val_loss'] if key == 'final_val_loss' else
                 r.get('difference', {'mean': 0.0}) if key == 'difference' else
                 r['downstream'].get(key, {'mean': None}) for r in rows]
        xs = range(len(rows))
        ax.bar(xs, [s['mean'] or 0 for s in stats], color=[colours(i % colours.N) for i in xs],
               yerr=[s.get('half_width') or 0 for s in stats], capsize=4)
        known = [s['mean'] for s in stats if s['mean'] is not None]
        if known and key == 'final_val_loss':  # losses differ in the third digit: do not start the axis at zero
            spread = max(known) - min(known) + max((s.get('half_width') or 0) for s in stats)
            ax.set_ylim(min(known) - 2 * spread - 1e-3, max(known) + 2 * spread + 1e-3)
        if key == 'difference':
            ax.axhline(0.0, color='black', linewidth=0.8)
        ax.set_xticks(list(xs), [r['variant'] for r in rows], rotation=30, ha='right', fontsize=8)
        ax.set_ylabel(label + (' (95% interval)' if any(s.get('half_width') for s in stats) else ''))
        ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, 'final_val_loss.png'))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def write(out_dir, title, budget, seeds, variants, runs, form='md'):
    """Aggregate, plot and write comparison.md (or .json) into out_dir; returns (path, text)."""
    rows = aggregate(variants, runs)
    os.makedirs(out_dir, exist_ok=True)
    plots = plot(variants, runs, rows, out_dir)
    if form == 'json':
        text = json.dumps({'title': title, 'answer': answer(rows, seeds), 'budget': budget, 'seeds': seeds,
                           'test': TEST_NAME, 'variants': rows, 'plots': [os.path.basename(p) for p in plots],
                           'runs': [{'variant': v, 'seed': s, **({'error': r['error']} if 'error' in r else
                                     {k: r.get(k) for k in ('final_val_loss', 'iterations', 'tokens', 'train_flops',
                                                            'tokens_per_sec', 'wall_time_s', 'out_dir')})}
                                    for (v, s), r in runs.items()]}, indent=1)
    else:
        text = markdown(title, budget, seeds, rows, plots)
    path = os.path.join(out_dir, f'comparison.{form}')
    files.write_text(path, text)
    return path, text

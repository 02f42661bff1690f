"""
Does the difference hold at scale? Per variant, a fit of final val loss against training FLOPs; bootstrap intervals
over seeds; the differences measured at each size (paired by seed, as bench/ablate.py reports them) and projected to
10x and 100x the largest compute; the report that opens with the answer (scaling.md or .json) and the plots.
bench/scaling.py calls it; it reads run records only.
"""
import json
import math
import os

import numpy as np

import ablate_report
import files
from errors import die

FORMS = {'power': 'L(C) = E + A·C^(-alpha)', 'loglinear': 'L(C) = a + b·log10(C)'}
PARAMETERS = {'power': ('E', 'A', 'alpha'), 'loglinear': ('a', 'b')}
PROJECTIONS = (10, 100)  # multiples of the largest compute measured
RESAMPLES = 2000
ALPHA_MAX = 3.0  # the power fit's exponent is searched in (0.001, 3]
TOLERANCE = 1e-9  # an interval this close to zero holds it (noise-free data give intervals of zero width)
GRID_POINTS = 20  # points the curves and the band are drawn at, up to the largest compute and again past it


def scipy_or_die():
    try:
        import scipy.optimize
        import scipy.stats
    except ImportError:
        die("the scaling fits need scipy: pip install scipy (or pip install -r requirements-dev.txt)")
    return scipy


# ---- fits ----

def _best_offset_and_scale(alphas, x, y):
    """For each alpha: the least-squares E >= 0 and A >= 0 of y = E + A * exp(-alpha * x), and its squared error.
    For a fixed alpha the model is linear in E and A, so the best point has a closed form (or lies on an edge)."""
    z = np.exp(-np.outer(alphas, x))
    zm, ym = z.mean(axis=1), y.mean()
    dz = z - zm[:, None]
    var = (dz ** 2).sum(axis=1)
    a_free = np.where(var > 0, dz @ (y - ym) / np.where(var > 0, var, 1.0), 0.0)
    e_free = ym - a_free * zm

    def sse(e, a):
        return ((e[:, None] + a[:, None] * z - y) ** 2).sum(axis=1)
    # the edges: E = 0 (A fitted alone) and A = 0 (a flat line at the mean)
    e_zero, a_zero = np.zeros_like(alphas), np.maximum(0.0, z @ y / (z * z).sum(axis=1))
    e_flat, a_flat = np.full_like(alphas, max(0.0, ym)), np.zeros_like(alphas)
    candidates = [(e_free, a_free, np.where((e_free >= 0) & (a_free >= 0), sse(e_free, a_free), np.inf)),
                  (e_zero, a_zero, sse(e_zero, a_zero)), (e_flat, a_flat, sse(e_flat, a_flat))]
    pick = np.argmin(np.stack([c[2] for c in candidates]), axis=0)
    rows = np.arange(len(alphas))
    return tuple(np.stack([c[i] for c in candidates])[pick, rows] for i in range(3))


def fit_power(flops, losses):
    """{'E', 'A', 'alpha'} of L = E + A * C^-alpha, least squares with E >= 0 and A >= 0. Only alpha is searched
    (E and A follow from it): a grid, then scipy's bounded scalar minimizer between the grid's best neighbours."""
    from scipy.optimize import minimize_scalar
    c, y = np.asarray(flops, dtype=float), np.asarray(losses, dtype=float)
    scale = math.exp(np.log(c).mean())  # C / scale is near 1, so E and A are found at similar magnitudes
    x = np.log(c / scale)
    grid = np.geomspace(1e-3, ALPHA_MAX, 120)
    errors = _best_offset_and_scale(grid, x, y)[2]
    i = int(np.argmin(errors))
    best = minimize_scalar(lambda a: _best_offset_and_scale(np.array([a]), x, y)[2][0], method='bounded',
                           bounds=(grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)]), options={'xatol': 1e-7})
    alpha = float(best.x) if best.fun <= errors[i] else float(grid[i])
    e, a, _ = (float(v[0]) for v in _best_offset_and_scale(np.array([alpha]), x, y))
    return {'E': e, 'A': a * scale ** alpha, 'alpha': alpha}


def fit_loglinear(flops, losses):
    """{'a', 'b'} of L = a + b * log10(C) by least squares (b: the change of the loss per decade of compute)."""
    b, a = np.polyfit(np.log10(np.asarray(flops, dtype=float)), np.asarray(losses, dtype=float), 1)
    return {'a': float(a), 'b': float(b)}


def predict(form, params, flops):
    c = np.asarray(flops, dtype=float)
    if form == 'power':
        return params['E'] + params['A'] * c ** -params['alpha']
    return params['a'] + params['b'] * np.log10(c)


def exponent(form, params, flops):
    """alpha, or for the log-linear form the exponent of the power law tangent to it at flops (-d ln L / d ln C)."""
    if form == 'power':
        return params['alpha']
    return -params['b'] / (math.log(10) * float(predict(form, params, flops)))


# ---- data, quantities, bootstrap ----

def paired_points(sizes, variants, records):
    """{size: {seed: {variant: (train FLOPs, final val loss)}}} for the seeds every variant finished at that size:
    a resample takes a seed's runs together, so differences stay paired by seed."""
    points = {}
    for size in sizes:
        by_seed = {}
        for (s, variant, seed), r in records.items():
            if s == size and 'error' not in r and ablate_report.final_val_loss(r) is not None:
                by_seed.setdefault(seed, {})[variant] = (r['train_flops'], ablate_report.final_val_loss(r))
        complete = {seed: v for seed, v in by_seed.items() if set(v) >= set(variants)}
        if complete:
            points[size] = dict(sorted(complete.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
    return points


def quantities(form, variants, points, choice, largest, grid):
    """What the report gives, from the runs choice names ({size: [seed, ...]}, a seed may repeat): per variant the
    fit, its exponent and losses at the largest compute and its multiples; per variant but the baseline the fitted
    difference at those and along grid, and its change from the largest compute to the last multiple."""
    fit = fit_power if form == 'power' else fit_loglinear
    at = np.array([largest] + [k * largest for k in PROJECTIONS])
    out, curves = {}, {}
    for v in variants:
        c = [points[size][seed][v][0] for size, seeds in choice.items() for seed in seeds]
        y = [points[size][seed][v][1] for size, seeds in choice.items() for seed in seeds]
        params = fit(c, y)
        curves[v] = params
        for key, value in params.items():
            out[f'{v}|{key}'] = value
        out[f'{v}|exponent'] = exponent(form, params, largest)
        out[f'{v}|loss'] = predict(form, params, at)
    base = variants[0]
    for v in variants[1:]:
        diff = predict(form, curves[v], at) - predict(form, curves[base], at)
        out[f'{v}|difference'] = diff
        out[f'{v}|trend'] = diff[-1] - diff[0]
        out[f'{v}|band'] = predict(form, curves[v], grid) - predict(form, curves[base], grid)
    return out


def flatten(values):
    return np.concatenate([np.atleast_1d(np.asarray(values[k], dtype=float)) for k in sorted(values)])


def unflatten(vector, like):
    out, i = {}, 0
    for k in sorted(like):
        n = np.atleast_1d(like[k]).size
        out[k] = vector[i:i + n] if np.ndim(like[k]) else float(vector[i])
        i += n
    return out


def bootstrap(form, variants, points, largest, grid, resamples, seed=0, widen=True):
    """95% intervals {key: (low, high)} from a bootstrap over seeds: at each size the seeds are drawn with
    replacement (scipy.stats.bootstrap, one sample per size), the same seeds for every variant; a size with one seed
    is kept as it is. None when no size has two seeds.

    A percentile interval over so few seeds is too narrow (it treats the seeds' spread as known, and draws of n
    from n shrink it by (n-1)/n): over 3 sizes it held a constant difference's true change 57% of the time with 2
    seeds and 78% with 3, not 95% (bench/scaling_coverage.py; 84% and 94% widened). So each interval is widened
    about the estimate by sqrt(n/(n-1)) * t(0.975, dof) / 1.96, n the fewest seeds at a size and dof the seeds less
    one, summed over the sizes (the expanded percentile interval in its normal form; for a mean it is the
    t-interval). widen=False gives the plain percentile intervals."""
    scipy = scipy_or_die()
    drawn = [size for size, by_seed in points.items() if len(by_seed) > 1]
    if not drawn:
        return None
    fixed = {size: list(by_seed) for size, by_seed in points.items()}
    estimate = quantities(form, variants, points, fixed, largest, grid)

    def statistic(*indices):
        choice = dict(fixed)
        for size, picked in zip(drawn, indices):
            seeds = list(points[size])
            choice[size] = [seeds[int(i)] for i in picked]
        return flatten(quantities(form, variants, points, choice, largest, grid))
    result = scipy.stats.bootstrap(tuple(np.arange(len(points[size])) for size in drawn), statistic,
                                   n_resamples=resamples, vectorized=False, paired=False, method='percentile',
                                   confidence_level=0.95, random_state=np.random.default_rng(seed))
    n = min(len(points[size]) for size in drawn)
    dof = sum(len(points[size]) - 1 for size in drawn)
    factor = math.sqrt(n / (n - 1)) * scipy.stats.t.ppf(0.975, dof) / scipy.stats.norm.ppf(0.975) if widen else 1.0
    middle = flatten(estimate)
    low, high = result.confidence_interval
    low, high = middle - factor * np.maximum(middle - low, 0), middle + factor * np.maximum(high - middle, 0)
    low, high = unflatten(low, estimate), unflatten(high, estimate)
    return {k: (low[k], high[k]) for k in estimate}


def holds_zero(interval):
    low, high = interval
    return low <= TOLERANCE and high >= -TOLERANCE


# ---- the report ----

def analyse(sizes, variants, records, form, resamples=RESAMPLES, widen=True):
    """Everything the report says: per-size rows (ablate_report.aggregate), the fit, intervals, verdicts."""
    by_size = {size: ablate_report.aggregate(variants, {(v, seed): r for (s, v, seed), r in records.items() if s == size})
               for size in sizes}
    points = paired_points(sizes, variants, records)
    result = {'form': form, 'variants': variants, 'rows': by_size, 'sizes_fitted': list(points), 'notes': []}
    if len(points) < (3 if form == 'power' else 2):
        result['notes'].append(f"{len(points)} size(s) with runs of every variant: too few to fit {FORMS[form]}")
        return result
    if form == 'power' and len(points) == 3:
        result['notes'].append("3 parameters through 3 compute points: the power law fits them exactly, so nothing "
                               "is left to check it, and E is poorly pinned down")
    scipy_or_die()
    # the compute axis: the baseline's mean training FLOPs at each size
    compute = {size: float(np.mean([p['baseline'][0] for p in by_seed.values()])) for size, by_seed in points.items()}
    largest = max(compute.values())
    grid = np.concatenate([np.geomspace(min(compute.values()), largest, GRID_POINTS),
                           np.geomspace(largest, largest * PROJECTIONS[-1], GRID_POINTS + 1)[1:]])
    every = {size: list(by_seed) for size, by_seed in points.items()}
    estimate = quantities(form, variants, points, every, largest, grid)
    intervals = bootstrap(form, variants, points, largest, grid, resamples, widen=widen)
    seeds = min(len(by_seed) for by_seed in points.values())
    if intervals is None:
        result['notes'].append("one seed per size: no intervals, so the data cannot tell a difference from seed "
                               "noise (run --seeds 3 or more)")
    elif seeds < 3:
        result['notes'].append(f"{seeds} seeds at a size: the bootstrap's intervals are rough (in simulated sweeps "
                               "of 3 sizes its 95% intervals of the change held the truth 84% of the time with 2 "
                               "seeds, 94% with 3: bench/scaling_coverage.py); run 3 or more seeds to trust a verdict")
    if form == 'power':
        for v in variants:
            if estimate[f'{v}|E'] <= TOLERANCE:
                result['notes'].append(f"{v}: E sits at its bound 0 (a pure power law fits best): the data do not "
                                       "pin down the irreducible loss")
            if estimate[f'{v}|alpha'] >= ALPHA_MAX * (1 - 1e-6):
                result['notes'].append(f"{v}: alpha sits at its bound {ALPHA_MAX}")
    result.update(compute=compute, largest=largest, grid=grid.tolist(), estimate=estimate, intervals=intervals)
    result['verdicts'] = {v: verdict(v, result) for v in variants[1:]}
    return result


def measured_at(result, variant, size):
    row = next(r for r in result['rows'][size] if r['variant'] == variant)
    return row.get('difference', {'n': 0, 'mean': None, 'half_width': None})


def flops_text(c):
    return f"{c:.1e}".replace('e+', 'e')


def _interval(interval, digits=3):
    return f"95% interval {interval[0]:+.{digits}f} to {interval[1]:+.{digits}f}"


def misfits(variant, result):
    """[(size, fitted, measured)] where the fitted difference lies outside the paired 95% interval measured at that
    size: there the form does not describe the data, and the bootstrap (which knows only seed noise) cannot say so."""
    names, form, base = PARAMETERS[result['form']], result['form'], result['variants'][0]
    missed = []
    for size, compute in result['compute'].items():
        measured = measured_at(result, variant, size)
        fitted = float(predict(form, {n: result['estimate'][f'{variant}|{n}'] for n in names}, compute)
                       - predict(form, {n: result['estimate'][f'{base}|{n}'] for n in names}, compute))
        if measured['half_width'] is not None and abs(fitted - measured['mean']) > measured['half_width']:
            missed.append((size, fitted, measured))
    return missed


def verdict(variant, result):
    """{'kind': grows | shrinks | turns | holds | cannot_tell | no_interval, 'sentence': ..., 'misfits': [...]}: first
    whether the projected difference at the last multiple is told from zero, then whether the fitted difference
    changes from the largest compute to there; a fit that misses a size's measured difference is said beside it."""
    est, intervals = result['estimate'], result['intervals']
    largest, far = result['largest'], result['largest'] * PROJECTIONS[-1]
    size = max(result['compute'], key=result['compute'].get)
    measured = measured_at(result, variant, size)
    fitted_now, projected = est[f'{variant}|difference'][0], est[f'{variant}|difference'][-1]
    now = (f"{measured['mean']:+.3f}" + (f" ± {measured['half_width']:.3f}" if measured['half_width'] is not None else '')
           + f" measured at {flops_text(largest)} FLOPs (fitted {fitted_now:+.3f})")
    missed = misfits(variant, result)
    caveat = '' if not missed else '; but the fit misses the measured difference at ' + ', '.join(
        f"{s} (fitted {f:+.3f}, measured {m['mean']:+.3f} ± {m['half_width']:.3f})" for s, f, m in missed) + \
        ', so the projection rests on the form more than on the data'
    if intervals is None:
        kind, sentence = 'no_interval', (f"{variant}: {now}, {projected:+.3f} projected at {flops_text(far)}; one seed: "
                                         "the data cannot tell how much of it is seed noise (run --seeds 3)")
    else:
        spread = (intervals[f'{variant}|difference'][0][-1], intervals[f'{variant}|difference'][1][-1])
        trend = intervals[f'{variant}|trend']
        side = 'gain over' if projected < 0 else 'deficit to'
        if holds_zero(spread):
            kind, sentence = 'cannot_tell', (
                f"the data cannot tell whether {variant} beats the baseline at {PROJECTIONS[-1]}x the largest "
                f"compute: {projected:+.3f} projected at {flops_text(far)} FLOPs ({_interval(spread)}); {now}")
        elif holds_zero(trend):
            kind, sentence = 'holds', (
                f"{variant}'s {side} the baseline holds with compute: {now} and {projected:+.3f} projected at "
                f"{flops_text(far)} ({_interval(spread)}); no change with compute beyond seed noise (change "
                f"{est[f'{variant}|trend']:+.3f}, {_interval(trend)})")
        elif fitted_now * projected < 0:
            kind, sentence = 'turns', (
                f"{variant} turns from a {'deficit' if projected < 0 else 'gain'} into a "
                f"{'gain' if projected < 0 else 'deficit'} with compute: {now} to {projected:+.3f} projected at "
                f"{flops_text(far)} ({_interval(spread)})")
        else:
            kind = 'grows' if abs(projected) > abs(fitted_now) else 'shrinks'
            sentence = (f"{variant}'s {side} the baseline {kind} with compute: {now} to {projected:+.3f} projected "
                        f"at {flops_text(far)} ({_interval(spread)})")
    return {'kind': kind, 'sentence': sentence + caveat, 'misfits': [s for s, _, _ in missed]}


def answer(result, variants):
    if 'verdicts' not in result:
        return 'no fit: ' + '; '.join(result['notes']) + '.'
    return '; '.join(result['verdicts'][v]['sentence'] for v in variants[1:]) + '.'


def _with_interval(result, key, index=None, spec='.4f'):
    """The estimate, and its 95% bootstrap interval in brackets when there is one."""
    def pick(value):
        return float(value if index is None else value[index])
    cell = f"{pick(result['estimate'][key]):{spec}}"
    if result['intervals'] is None:
        return cell
    low, high = result['intervals'][key]
    return cell + f" [{pick(low):{spec}}, {pick(high):{spec}}]"


def markdown(title, setup, sizes, variants, result, plots):
    seeds = ', '.join("the config's" if s is None else str(s) for s in setup['seeds'])
    lines = [f"# {title}", '', f"**Answer:** {answer(result, variants)}", '',
             f"Sizes: {', '.join(f'{s} ({p / 1e6:.3g}M parameters)' for s, p in setup['parameters'].items())}; each "
             f"trains the baseline for {setup['tokens_per_param']:g} tokens per parameter; within a size, "
             f"{ablate_report.BUDGETS[setup['budget']]}. Seeds: {seeds}. Metric: validation loss at the end of each "
             f"run, against its training FLOPs (the run log's FLOPs per token x tokens trained).",
             '', f"Fit: {FORMS[result['form']]} per variant, least squares over every run ({setup['fit_reason']}). "
             f"Intervals: the differences at each size from a {ablate_report.TEST_NAME}; the fit's and the "
             f"projections' from a bootstrap over seeds ({setup['resamples']} resamples: at each size the seeds are "
             f"drawn with replacement, the same for every variant; 95% percentile intervals widened about the "
             f"estimate by sqrt(n/(n-1))·t(0.975, dof)/1.96 for n seeds, as a plain bootstrap over few seeds is too "
             f"narrow).", '']
    lines += [f"Note: {n}." for n in result['notes']] + ([''] if result['notes'] else [])
    lines += ['## Measured, by size', '',
              '| size | variant | runs | iterations | tokens | train FLOPs | val loss (mean ± 95%) | Δ vs baseline (paired) | verdict |',
              '|---|---|---|---|---|---|---|---|---|']
    for size in sizes:
        for r in result['rows'][size]:
            lines.append('| ' + ' | '.join([
                size, r['variant'], f"{r['runs']}" + (f" ({len(r['failed'])} failed)" if r['failed'] else ''),
                f"{r['iterations']:.0f}" if r['iterations'] is not None else '-',
                f"{r['tokens']:,.0f}" if r['tokens'] is not None else '-',
                f"{r['train_flops']:.3e}" if r['train_flops'] is not None else '-',
                ablate_report.plus_minus(r['final_val_loss']),
                ablate_report.plus_minus(r['difference']) if 'difference' in r else '(baseline)',
                r.get('verdict', '')]) + ' |')
    if 'estimate' in result:
        largest = result['largest']
        at = [flops_text(largest)] + [f"{k}x: {flops_text(k * largest)}" for k in PROJECTIONS]
        names = list(PARAMETERS[result['form']])
        # a line in log C has no exponent of its own: that of the power law tangent to it at the largest compute
        local = ['local exponent at the largest compute'] if result['form'] == 'loglinear' else []
        lines += ['', '## Fits', '', 'Estimates with 95% bootstrap intervals in brackets' +
                  (' (none: one seed)' if result['intervals'] is None else '') + '.', '',
                  '| variant | ' + ' | '.join(names + local) + ' | ' + ' | '.join(f'loss at {a}' for a in at) + ' |',
                  '|---|' + '---|' * (len(names) + len(local) + len(at))]
        for v in variants:
            cells = [_with_interval(result, f'{v}|{n}', spec='.3g' if n == 'A' else '.4f') for n in names]
            cells += [_with_interval(result, f'{v}|exponent')] if local else []
            cells += [_with_interval(result, f'{v}|loss', i) for i in range(len(at))]
            lines.append(f'| {v} | ' + ' | '.join(cells) + ' |')
        lines += ['', '## Differences to the baseline, fitted and projected', '',
                  '| variant | ' + ' | '.join(f'Δ at {a}' for a in at) + f' | change to {PROJECTIONS[-1]}x | verdict |',
                  '|---|' + '---|' * (len(at) + 2)]
        for v in variants[1:]:
            cells = [_with_interval(result, f'{v}|difference', i, spec='+.4f') for i in range(len(at))]
            missed = result['verdicts'][v]['misfits']
            cells += [_with_interval(result, f'{v}|trend', spec='+.4f'), result['verdicts'][v]['kind'].replace('_', ' ')
                      + (f" (the fit misses {', '.join(missed)})" if missed else '')]
            lines.append(f'| {v} | ' + ' | '.join(cells) + ' |')
    if plots:
        lines += [''] + [f"![{os.path.basename(p)[:-4]}]({os.path.basename(p)})" for p in plots]
    return '\n'.join(lines) + '\n'


def plot(sizes, variants, records, result, out_dir):
    """scaling.png (none, with a note, without matplotlib): the final val loss against training FLOPs on log axes,
    each run a dot, each variant's fit a line (dashed past the largest compute); and each variant's difference to the
    baseline, measured per size with its paired 95% interval, fitted, with its bootstrap band."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    if 'estimate' not in result:
        return []
    colours = plt.get_cmap('tab10')
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    grid = np.array(result['grid'])
    largest = result['largest']
    names = PARAMETERS[result['form']]
    inside, beyond = grid <= largest * (1 + 1e-9), grid >= largest * (1 - 1e-9)  # the grid holds largest itself
    for i, v in enumerate(variants):
        colour = colours(i % 10)
        runs = [r for (_, name, _), r in records.items() if name == v and 'error' not in r
                and ablate_report.final_val_loss(r) is not None]
        left.scatter([r['train_flops'] for r in runs], [ablate_report.final_val_loss(r) for r in runs], s=14,
                     color=colour, alpha=0.7)
        params = {n: result['estimate'][f'{v}|{n}'] for n in names}
        left.plot(grid[inside], predict(result['form'], params, grid[inside]), color=colour, label=v)
        left.plot(grid[beyond], predict(result['form'], params, grid[beyond]), color=colour, linestyle='--')
    for ax in (left, right):
        ax.set_xscale('log')
        for k in PROJECTIONS:
            ax.axvline(k * largest, color='grey', linewidth=0.6, linestyle=':')
        ax.set_xlabel('training FLOPs')
        ax.grid(alpha=0.3)
    left.set_yscale('log')
    for axis in (left.yaxis.set_major_formatter, left.yaxis.set_minor_formatter):  # 2.5, not 2.5x10^0
        axis(matplotlib.ticker.FormatStrFormatter('%.2f'))
    left.set_ylabel('final val loss')
    left.set_title(f"fit: {FORMS[result['form']]}", fontsize=9)
    left.legend(fontsize=8)
    for i, v in enumerate(variants[1:], start=1):
        colour = colours(i % 10)
        compute = [result['compute'][s] for s in sizes if s in result['compute']]
        measured = [measured_at(result, v, s) for s in sizes if s in result['compute']]
        right.errorbar(compute, [m['mean'] for m in measured], yerr=[m['half_width'] or 0 for m in measured],
                       fmt='o', color=colour, capsize=3, label=f'{v}: measured (paired t, 95%)')
        right.plot(grid, result['estimate'][f'{v}|band'], color=colour, label=f'{v}: fitted')
        if result['intervals'] is not None:
            low, high = result['intervals'][f'{v}|band']
            right.fill_between(grid, low, high, color=colour, alpha=0.2, linewidth=0, label=f'{v}: 95% bootstrap band')
    right.axhline(0.0, color='black', linewidth=0.8)
    right.set_ylabel('val loss − baseline')
    right.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, 'scaling.png')
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


def _plain(value):
    """JSON-ready: arrays as lists, tuples of arrays as pairs of lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return float(value) if isinstance(value, np.floating) else value


def write(out_dir, title, setup, sizes, variants, records, form='md', resamples=RESAMPLES):
    """setup: seeds, budget, tokens_per_param, fit ('power' | 'loglinear'), fit_reason, parameters {size: count}.
    records: {(size, variant, seed): run record (bench/ablate.py load()) or {'error': ...}}. Analyse, plot and write
    scaling.md (or .json) into out_dir; returns (path, text)."""
    result = analyse(sizes, variants, records, setup['fit'], resamples)
    setup = {**setup, 'resamples': resamples}
    os.makedirs(out_dir, exist_ok=True)
    plots = plot(sizes, variants, records, result, out_dir)
    if form == 'json':
        text = json.dumps(_plain({
            'title': title, 'answer': answer(result, variants), 'setup': setup, 'sizes': sizes,
            'variants': variants, **{k: v for k, v in result.items() if k != 'grid'}, 'grid': result.get('grid'),
            'plots': [os.path.basename(p) for p in plots],
            'runs': [{'size': s, 'variant': v, 'seed': seed, **({'error': r['error']} if 'error' in r else
                      {k: r.get(k) for k in ('final_val_loss', 'iterations', 'tokens', 'train_flops', 'wall_time_s',
                                             'out_dir')})} for (s, v, seed), r in records.items()]}), indent=1)
    else:
        text = markdown(title, setup, sizes, variants, result, plots)
    path = os.path.join(out_dir, f'scaling.{form}')
    files.write_text(path, text)
    return path, text

"""
How often do bench/scaling_report.py's 95% intervals hold the truth? Simulated sweeps with a known law: the baseline
L(C) = 1.2 + 7200 * C^-0.3 and a variant 0.02 below it at every compute (a constant difference), seed noise that
moves both variants alike (as a seed's data order does) plus a third of it apart. For each setting it reports the
share of sweeps whose interval of the difference's change from the largest compute to 100x holds 0, and whose
interval of the projected difference at 100x holds -0.02, with the plain percentile bootstrap and widened.

    python bench/scaling_coverage.py --sweeps 100
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import scaling_report  # noqa: E402  (beside this script: its folder is on sys.path)

SETTINGS = [('loglinear', 3, 2), ('loglinear', 3, 3), ('loglinear', 3, 5), ('power', 5, 3)]  # form, sizes, seeds


def baseline_law(c):
    return 1.2 + 7.2e3 * c ** -0.3  # E = 1.2, alpha = 0.3: from 3.0 at 1e12 to 1.65 at 1e14


def synthetic_runs(laws, compute, seeds, noise, seed=0):
    """{(size, variant, seed): run record} with final val loss law(C) plus noise: a seed's share moves every variant
    alike, and each run has a third of it of its own."""
    rng = np.random.default_rng(seed)
    runs = {}
    for k, c in enumerate(compute):
        for s in seeds:
            shared = rng.normal(0, noise)
            for variant, law in laws.items():
                loss = law(c) + shared + rng.normal(0, noise / 3)
                runs[(f'size{k}', variant, s)] = {
                    'evals': [{'iter': 10, 'val_loss': float(loss)}], 'train_flops': float(c), 'iterations': 10,
                    'tokens': 640, 'tokens_per_sec': 1000.0, 'wall_time_s': 1.0, 'downstream': {}}
    return runs


def coverage(form, n_sizes, n_seeds, sweeps, resamples, widen, noise=0.003):
    laws = {'baseline': baseline_law, 'variant': lambda c: baseline_law(c) - 0.02}
    compute = np.geomspace(1e12, 1e14, n_sizes)
    sizes = [f'size{k}' for k in range(n_sizes)]
    trend_held = projection_held = 0
    for sweep in range(sweeps):
        runs = synthetic_runs(laws, compute, range(1, n_seeds + 1), noise, seed=sweep)
        result = scaling_report.analyse(sizes, list(laws), runs, form, resamples, widen=widen)
        low, high = result['intervals']['variant|trend']
        trend_held += low <= 0 <= high
        low, high = result['intervals']['variant|difference']
        projection_held += low[-1] <= -0.02 <= high[-1]
    return trend_held / sweeps, projection_held / sweeps


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--sweeps', type=int, default=100, help='simulated sweeps per setting')
    parser.add_argument('--resamples', type=int, default=300, help='bootstrap resamples per sweep')
    args = parser.parse_args()
    print("| fit | sizes | seeds | change held 0 (plain / widened) | 100x difference held -0.02 (plain / widened) |")
    print("|---|---|---|---|---|")
    for form, n_sizes, n_seeds in SETTINGS:
        plain = coverage(form, n_sizes, n_seeds, args.sweeps, args.resamples, widen=False)
        widened = coverage(form, n_sizes, n_seeds, args.sweeps, args.resamples, widen=True)
        print(f"| {form} | {n_sizes} | {n_seeds} | {plain[0]:.0%} / {widened[0]:.0%} | {plain[1]:.0%} / {widened[1]:.0%} |",
              flush=True)


if __name__ == '__main__':
    main()

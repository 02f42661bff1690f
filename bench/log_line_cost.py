"""
What one log line costs as a run grows: runlog.RunLog.iteration (append a .jsonl line and a CSV row) against
rewriting the whole JSON log at every line (what train.py did before), at 1k and 100k logged iterations.

    python bench/log_line_cost.py --lines 1000 100000

Each line is a real entry's size (the fields train.py logs for a 12-layer model, per-layer statistics every
10th line). Reports the median cost of the last 200 lines before each mark, and of writing the final .json.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import files  # noqa: E402
import runlog  # noqa: E402


def entry(i):
    record = {'iter': i, 'loss': 3.1 + 1e-6 * i, 'loss_variance': 0.012, 'aux_loss': None, 'lr': 6e-4,
              'grad_norm': 0.83, 'grad_clipped': False, 'grad_mean': 1.2e-7, 'grad_std': 3.4e-5,
              'grad_non_finite': 0, 'time_ms': 412.5, 'tokens_per_sec': 119000.0, 'tokens_seen': 491520 * i,
              'epoch': 0.001 * i, 'warmup': False, 'mfu': 0.47, 'achieved_tflops': 465.0,
              'flops_per_token': 8.5e8, 'memory_allocated_mb': 20480.0, 'memory_peak_mb': 30720.0,
              'memory_reserved_mb': 32768.0}
    if i % 10 == 0:
        record['grad_norm_per_layer'] = {f'blocks.{k}': 0.1 for k in range(12)}
        record['update_to_weight'] = {f'blocks.{k}': 1e-3 for k in range(12)}
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--lines', type=int, nargs='+', default=[1000, 100000])
    parser.add_argument('--old_up_to', type=int, default=10000, help='rewrite-everything lines to time (it is slow)')
    args = parser.parse_args()
    marks, rows = sorted(args.lines), []
    with tempfile.TemporaryDirectory() as folder:
        header = {'run_name': 'bench', 'start_time': '', 'config': {'x': 1}, 'startup_info': {'a': 1}}
        log = runlog.RunLog(folder, header)
        times, n = [], 0
        for mark in marks:
            while n < mark:
                n += 1
                start = time.perf_counter()
                log.iteration(entry(n))
                times.append(time.perf_counter() - start)
            rows.append(('append (.jsonl + CSV)', mark, statistics.median(times[-200:]) * 1e3))
        start = time.perf_counter()
        log.finish({})
        final_s = time.perf_counter() - start
        size_mb = os.path.getsize(log.path) / 2 ** 20
        # the old way: the whole log serialized and written atomically at every line
        old, iterations = os.path.join(folder, 'old.json'), []
        for i in range(1, args.old_up_to + 1):
            iterations.append(entry(i))
            if i in (1000, args.old_up_to) or i > args.old_up_to - 5:
                start = time.perf_counter()
                files.write_text(old, json.dumps({**header, 'training_iterations': iterations}, indent=1))
                if i in (1000, args.old_up_to):
                    rows.append(('rewrite whole JSON (before)', i, (time.perf_counter() - start) * 1e3))
    print('| method | logged iterations | ms per log line |')
    print('|---|---|---|')
    for method, mark, ms in rows:
        print(f'| {method} | {mark:,} | {ms:.3f} |')
    print(f'\nfinal .json of {marks[-1]:,} iterations ({size_mb:.0f} MiB), written once at the end: {final_s:.2f} s')


if __name__ == '__main__':
    main()

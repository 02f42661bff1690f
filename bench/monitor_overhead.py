"""
What train.py's monitoring costs per iteration at given intervals, against a training step of the same model.

    python bench/monitor_overhead.py                      # the CPU demo model, default intervals (10, 100)
    python bench/monitor_overhead.py --preset=llama --n_layer=6 --n_embd=384 --block_size=256 --batch_size=8

Gradient mean/std/non-finite counts and memory run at every log line; per-layer gradient norms and
update/weight ratios (a weight snapshot) at every grad_stats_interval. Overhead per iteration =
(log-line cost / log_interval + per-layer cost / grad_stats_interval) / step time.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import monitor  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', default='gpt2')
    parser.add_argument('--n_layer', type=int, default=4)
    parser.add_argument('--n_head', type=int, default=4)
    parser.add_argument('--n_embd', type=int, default=128)
    parser.add_argument('--block_size', type=int, default=64)
    parser.add_argument('--vocab_size', type=int, default=65)
    parser.add_argument('--batch_size', type=int, default=12)
    parser.add_argument('--log_interval', type=int, default=10)
    parser.add_argument('--grad_stats_interval', type=int, default=100)
    parser.add_argument('--repeats', type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GPTConfig.from_preset(args.preset, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                                   block_size=args.block_size, vocab_size=args.vocab_size)
    model = GPT(config)
    [optimizer] = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    x = torch.randint(0, args.vocab_size, (args.batch_size, args.block_size))

    def step():
        _, loss = model(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def backward_only():
        optimizer.zero_grad(set_to_none=True)
        model(x, x)[1].backward()

    identity = (lambda t: t)
    for _ in range(5):
        step()
    step_s = timed(step, args.repeats)
    backward_only()
    log_line_s = timed(lambda: (monitor.grad_stats(model, identity, per_layer=False),
                                monitor.memory_stats('cpu', 'cpu')), args.repeats)

    def per_layer():
        monitor.grad_stats(model, identity, per_layer=True)
        before = monitor.snapshot_weights(model)
        monitor.update_ratios(model, before, identity)
    per_layer_s = timed(per_layer, args.repeats)
    overhead = (log_line_s / args.log_interval + per_layer_s / args.grad_stats_interval) / step_s
    print(f"model {config.architecture_name()}, batch {args.batch_size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"training step            {step_s * 1e3:8.2f} ms")
    print(f"log-line statistics      {log_line_s * 1e3:8.2f} ms (every {args.log_interval} iterations)")
    print(f"per-layer statistics     {per_layer_s * 1e3:8.2f} ms (every {args.grad_stats_interval} iterations)")
    print(f"overhead per iteration   {overhead:8.2%}")


if __name__ == '__main__':
    main()

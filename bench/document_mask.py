"""
What attention_mask='document' costs: training steps (forward, backward, AdamW) of one model with the causal mask
(SDPA's is_causal) and with the boolean block-diagonal document mask, alternated over rounds on the same batches.

    python bench/document_mask.py --preset=gpt2 --n_layer=4 --n_embd=256 --block_size=256 --batch_size=8 --rounds=3

A small vocabulary (--vocab_size, 512) keeps the output head from hiding the attention's share of the step.

Documents in the batches are drawn with lengths uniform in [1, 2 * mean_doc] tokens (--mean_doc, 100).
"""
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import GPT, GPTConfig  # noqa: E402


def main(argv):
    options = {'preset': 'gpt2', 'n_layer': '4', 'n_head': '4', 'n_embd': '256', 'block_size': '256',
               'batch_size': '8', 'vocab_size': '512', 'steps': '5', 'rounds': '3', 'mean_doc': '100',
               'attention_backend': 'sdpa'}
    for arg in argv:
        key, _, value = arg.removeprefix('--').partition('=')
        if key not in options:
            sys.exit(f"error: unknown option --{key}; allowed: {', '.join('--' + k for k in options)}")
        options[key] = value
    n = {k: int(v) for k, v in options.items() if k not in ('preset', 'attention_backend')}
    B, T = n['batch_size'], n['block_size']
    torch.manual_seed(0)
    x = torch.randint(0, n['vocab_size'], (B, T))
    lengths = torch.randint(1, 2 * n['mean_doc'] + 1, (B, T))  # enough documents to fill every row
    doc = torch.stack([torch.repeat_interleave(torch.arange(T), row)[:T] for row in lengths])
    models = {}
    for mask in ('causal', 'document'):
        config = GPTConfig.from_preset(options['preset'], n_layer=n['n_layer'], n_head=n['n_head'],
                                       n_embd=n['n_embd'], block_size=T, vocab_size=n['vocab_size'],
                                       attention_mask=mask,
                                       attention_backend=options['attention_backend'])
        model = GPT(config)
        models[mask] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4), doc if mask == 'document' else None)
    times = {mask: [] for mask in models}

    def step(mask):
        model, optimizer, ids = models[mask]
        _, loss = model(x, x, document_ids=ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for mask in models:
        step(mask)  # warm-up
    for _ in range(n['rounds']):
        for mask in models:
            start = time.perf_counter()
            for _ in range(n['steps']):
                step(mask)
            times[mask].append((time.perf_counter() - start) / n['steps'])
    rate = {mask: B * T / sorted(t)[len(t) // 2] for mask, t in times.items()}
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{options['preset']} {n['n_layer']}L {n['n_embd']}D vocab {n['vocab_size']}, {B} x {T} tokens, "
          f"{options['attention_backend']}, documents of mean {n['mean_doc']} tokens")
    for mask in models:
        print(f"{mask:9s} {rate[mask]:10,.0f} tokens/s (median of {n['rounds']} rounds of {n['steps']} steps)")
    print(f"document / causal: {rate['document'] / rate['causal']:.3f}")


if __name__ == '__main__':
    main(sys.argv[1:])

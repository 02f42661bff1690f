"""
How often does a bf16 router send a token to other experts than an fp32 one?

    python bench/moe_router_precision.py

Under bf16 autocast a plain nn.Linear router rounds its inputs and weights to bf16 before the matmul; the top-k
choice then differs from the fp32 one for tokens whose k-th and (k+1)-th logits are close. Layer-normed random
activations and random router weights, 16,384 tokens per shape, CPU autocast (the rounding is the same on a GPU).
"""
import torch
import torch.nn.functional as F

torch.manual_seed(0)
for D, E, k, std in [(768, 8, 2, 0.02), (768, 8, 2, 0.1), (2048, 64, 8, 0.02)]:
    x = F.layer_norm(torch.randn(16384, D), (D,))
    w = torch.randn(E, D) * std
    full = (x @ w.T).softmax(-1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = F.linear(x, w).float().softmax(-1)
    chosen_full, chosen_low = (p.topk(k).indices.sort(-1).values for p in (full, low))
    moved = (chosen_full != chosen_low).any(-1).float().mean().item()
    print(f"d={D}, {E} experts, top-{k}, router std {std}: {moved:.2%} of tokens routed differently, "
          f"largest routing-probability difference {(full - low).abs().max():.1e}")

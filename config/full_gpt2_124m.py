# GPT-2 small (124M): 12 layers, 12 heads, 768 wide, learned positions, LayerNorm, tanh-GELU, tied head.
arch_preset = 'gpt2'
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024

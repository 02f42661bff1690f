# Llama-style model at GPT-2-small scale: RoPE, RMSNorm, SwiGLU, no biases, untied head.
# 124M non-embedding parameters (the output head counts, the input table does not).
arch_preset = 'llama'
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024

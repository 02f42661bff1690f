# Llama recipe at 1.3B scale: 24 layers, 16 heads, 2048 wide, SwiGLU hidden 5632 (1.34B non-embedding).
arch_preset = 'llama'
n_layer = 24
n_head = 16
n_embd = 2048
block_size = 1024

# A tiny llama-style model that trains in seconds on a CPU: for smoke tests.
arch_preset = 'llama'
n_layer = 2
n_head = 4
n_kv_head = 2
n_embd = 64
block_size = 64

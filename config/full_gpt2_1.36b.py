# GPT-2 recipe at 1.3B scale: 24 layers, 16 heads, 2048 wide (1.31B parameters).
arch_preset = 'gpt2'
n_layer = 24
n_head = 16
n_embd = 2048
block_size = 1024

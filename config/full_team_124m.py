# The team's own architecture: starts as llama, edit the 'team' preset in model.py (or the lines below).
arch_preset = 'team'
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024

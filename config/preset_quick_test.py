# A tiny llama-style model that trains in seconds on a CPU: for smoke tests.
# python train.py config/preset_quick_test.py
out_dir = 'out-quick-test'
dataset = 'shakespeare_char'
arch_preset = 'llama'
n_layer = 2
n_head = 4
n_kv_head = 2
n_embd = 64
block_size = 64
batch_size = 8
gradient_accumulation_steps = 2
max_iters = 50
warmup_iters = 5
learning_rate = 3e-3
eval_interval = 25
eval_iters = 10
log_interval = 10
overwrite = True

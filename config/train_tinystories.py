# A small llama-style model on TinyStories (GPT-2 BPE).
# python data/tinystories/prepare.py [--input ../shared/data/tinystories]
out_dir = 'out-tinystories'
dataset = 'tinystories'
arch_preset = 'llama'
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
dropout = 0.0
batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 6e-4
max_iters = 5000
min_lr = 6e-5
warmup_iters = 200
eval_interval = 250
eval_iters = 50
log_interval = 10

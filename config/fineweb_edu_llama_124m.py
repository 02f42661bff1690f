# The llama 124M model on FineWeb-Edu sample-10BT: ~0.5M tokens per iteration (16 x 1024 x 30),
# 19,000 iterations = 9.3B tokens (just under one epoch), lr 6e-4 cosine to 6e-5 after 700 warm-up iterations.
# python data/fineweb_edu/prepare.py --subset sample-10BT
# torchrun --standalone --nproc_per_node=8 train.py config/fineweb_edu_llama_124m.py
out_dir = 'out-fineweb-edu-llama-124m'
dataset = 'fineweb_edu'
arch_preset = 'llama'
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
vocab_size = 50304
dropout = 0.0
batch_size = 16
gradient_accumulation_steps = 30  # global: divisible by 1, 2, 3, 5, 6 and 10 ranks (use 32 on 8)
max_iters = 19000
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 700
weight_decay = 0.1
beta2 = 0.95
eval_interval = 500
eval_iters = 100
log_interval = 10
compile = True

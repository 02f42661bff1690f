# nanoGPT's GPT-2 small (124M) recipe on OpenWebText: ~0.5M tokens per iteration (12 x 1024 x 40),
# 600k iterations (~295B tokens, ~33 epochs of OpenWebText's 9B), lr 6e-4 cosine to 6e-5.
# python data/openwebtext/prepare.py
# torchrun --standalone --nproc_per_node=8 train.py config/preset_gpt2_owt.py
out_dir = 'out-gpt2-owt'
dataset = 'openwebtext'
arch_preset = 'gpt2'
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64: faster matmuls
dropout = 0.0
batch_size = 12
gradient_accumulation_steps = 40  # global: 5 per rank on 8 GPUs
max_iters = 600000
lr_decay_iters = 600000
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 0.1
beta2 = 0.95
eval_interval = 1000
eval_iters = 200
log_interval = 10
compile = True

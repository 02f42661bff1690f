# A baby GPT on character-level Shakespeare that trains in a few minutes on 2 CPU cores.
# python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py
out_dir = 'out-shakespeare-char-cpu'
dataset = 'shakespeare_char'
arch_preset = 'gpt2'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
dropout = 0.0
batch_size = 12
gradient_accumulation_steps = 1
learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
eval_interval = 250
eval_iters = 20
log_interval = 50
device = 'cpu'

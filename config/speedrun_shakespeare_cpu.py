# Time-to-loss record on 2 CPU cores: character-level Shakespeare to val loss <= 1.88, start to finish.
# python data/shakespeare_char/prepare.py && python train.py config/speedrun_shakespeare_cpu.py
# What it takes (vs config/train_shakespeare_char_cpu.py, nanoGPT's recipe of 2000 iterations): Muon for the
# blocks' matrices, QK-norm, ReLU^2 and RoPE, a 3x higher peak learning rate, batches twice as large and a
# 200-iteration warmup-stable-decay schedule (4.8k sequences, against nanoGPT's 24k). Each idea tried and its measured effect: bench/README.md, "The CPU speedrun".
out_dir = 'out-speedrun-cpu'
overwrite = True
dataset = 'shakespeare_char'
arch_preset = 'hybrid'  # LayerNorm, RoPE, pre-norm, tied head
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
dropout = 0.0
qk_norm = True  # 700 iterations of AdamW: val 1.893 against 1.934 without
activation = 'relu2'  # ReLU squared: 1.899 against 1.934 (GELU)
batch_size = 24  # half the Muon steps of batch 12 for the same tokens; val ~0.013 higher (seeds 1-3: 1.852 against 1.839)
optimizer = 'muon'  # 700 iterations: 1.803 against AdamW's 1.934; with QK-norm 1.751
learning_rate = 3e-3
max_iters = 200
lr_decay_iters = 200
lr_schedule = 'wsd'
wsd_decay_frac = 0.3  # hold the peak rate for 70% of the run, then decay linearly to min_lr
min_lr = 3e-4
warmup_iters = 25
weight_decay = 0.1
beta2 = 0.99
eval_interval = 200  # evaluate at the end only: evaluation time counts
eval_at_start = False
eval_iters = 20  # 30,720 val tokens, twice what nanoGPT's recipe reads (20 batches of 12), in the time two of 10 took
log_interval = 100
target_val_loss = 1.88
device = 'cpu'
dtype = 'float32'

# The llama 1.36B model on FineWeb-Edu sample-100BT: ~1M tokens per iteration (8 x 1024 x 128), 27,000 iterations
# = 28B tokens (about 20 per parameter), lr 3e-4 cosine to 3e-5, FSDP. For SlimPajama add --dataset=slimpajama_627b.
# python data/fineweb_edu/prepare.py --subset sample-100BT
# torchrun --nnodes=4 --nproc_per_node=8 ... train.py config/fineweb_edu_llama_1.36b.py
out_dir = 'out-fineweb-edu-llama-1.36b'
dataset = 'fineweb_edu'
arch_preset = 'llama'
n_layer = 24
n_head = 16
n_embd = 2048
block_size = 1024
vocab_size = 50304
dropout = 0.0
batch_size = 8
gradient_accumulation_steps = 128  # global: 4 per rank on 32 GPUs
max_iters = 27000
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 2000
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0
parallelism = 'fsdp'
eval_interval = 1000
eval_iters = 50
log_interval = 10
compile = True

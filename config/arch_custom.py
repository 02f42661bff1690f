# A baby GPT with the switches an ablation changes first, each on its own line (config/full_custom.py lists them
# all): about a minute on a CPU.   python train.py config/arch_custom.py --max_iters=100 --compile=False
arch_preset = 'gpt2'
n_layer, n_head, n_embd, block_size = 4, 4, 128, 64
position_encoding = 'rope'    # learned_absolute | rope | none
normalization = 'rmsnorm'     # layernorm | layernorm_nobias | rmsnorm
ffn_type = 'swiglu'           # standard | swiglu | geglu
n_kv_head = 2                 # grouped-query attention: 2 key/value heads for 4 query heads
qk_norm = True                # normalize queries and keys per head
out_dir, dataset = 'out-arch-custom', 'shakespeare_char'
max_iters, warmup_iters = 1000, 20  # the decay follows max_iters: --max_iters=100 decays over 100
learning_rate, min_lr, beta2, eval_iters, log_interval = 1e-3, 1e-4, 0.99, 20, 50

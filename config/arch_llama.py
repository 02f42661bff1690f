# Llama's architecture (RoPE, RMSNorm, SwiGLU, no biases, untied embeddings) at baby size, on character-level
# Shakespeare: about a minute on a CPU.   python train.py config/arch_llama.py --max_iters=100 --compile=False
arch_preset = 'llama'
n_layer, n_head, n_embd, block_size = 4, 4, 128, 64
out_dir, dataset = 'out-arch-llama', 'shakespeare_char'
max_iters, warmup_iters = 1000, 20  # the decay follows max_iters: --max_iters=100 decays over 100
learning_rate, min_lr, beta2, eval_iters, log_interval = 1e-3, 1e-4, 0.99, 20, 50

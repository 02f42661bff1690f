# Mixtral-style MoE: 12 layers, 768 wide, 12 query heads sharing 4 key/value heads,
# 8 SwiGLU experts with top-2 routing. ~549M parameters in all, ~209M active per token.
arch_preset = 'moe'
n_layer = 12
n_head = 12
n_kv_head = 4
n_embd = 768
n_expert = 8
n_expert_per_token = 2
moe_aux_loss_coef = 0.01
block_size = 1024

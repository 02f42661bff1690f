# Every architecture switch spelled out. Copy this file and change one line to run an ablation.
arch_preset = 'gpt2'                  # starting point: gpt2, llama, team, hybrid, moe
n_layer = 12
n_head = 12
n_kv_head = 12                        # key/value heads: n_head = multi-head, 1 = multi-query, between = GQA
n_embd = 768
block_size = 1024
vocab_size = 50304
normalization = 'layernorm'           # layernorm | layernorm_nobias | rmsnorm
norm_eps = 1e-5
norm_position = 'pre'                 # pre | post
activation = 'gelu_tanh'              # gelu | gelu_tanh | silu | relu | relu2 | leaky_relu (standard FFN)
position_encoding = 'learned_absolute'  # learned_absolute | rope | none
rope_theta = 10000.0                  # used by rope only
ffn_type = 'standard'                 # standard | swiglu | geglu
ffn_hidden = None                     # None: 4*n_embd (standard) or 8/3*n_embd rounded up (gated)
ffn_multiple_of = 256                 # rounding for the gated hidden size
bias = True                           # biases in the Linear layers
weight_tying = True                   # share the token embedding with the output head
dropout = 0.0
attention_backend = 'sdpa'            # sdpa | manual
attention_mask = 'causal'             # causal | document: a token sees only its own document (needs the document index)
qk_norm = False                       # normalize queries and keys per head
n_expert = 0                          # 0 = dense FFN; >0 = Mixture-of-Experts
n_expert_per_token = 2
moe_intermediate_size = None          # expert hidden size (None = same as the dense FFN)
moe_aux_loss_coef = 0.01              # load-balancing loss weight
gradient_checkpointing = False        # recompute block activations in backward to save memory
init_std = 0.02

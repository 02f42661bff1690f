"""
One hackable GPT. Every architecture switch is a field of GPTConfig and is read
with a plain `if` below, so searching for a field name finds everything it does.

Switches: normalization, activation, position_encoding (+ rope_theta),
norm_position, ffn_type (+ ffn_hidden, ffn_multiple_of), bias, weight_tying,
dropout, attention_backend, attention_mask, n_kv_head (GQA/MQA), qk_norm, n_expert /
n_expert_per_token / moe_intermediate_size / moe_aux_loss_coef (MoE),
gradient_checkpointing. Presets live in PRESETS at the bottom of the config.
"""
import math
from contextlib import nullcontext
import inspect
import difflib
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

import document_attention
from grouped_mm import grouped_mm
from kv_cache import KVCache

CHOICES = {
    'normalization': ('layernorm', 'layernorm_nobias', 'rmsnorm'),
    'activation': ('gelu', 'gelu_tanh', 'silu', 'relu', 'relu2', 'leaky_relu'),
    'position_encoding': ('learned_absolute', 'rope', 'none'),
    'norm_position': ('pre', 'post'),
    'ffn_type': ('standard', 'swiglu', 'geglu'),
    'attention_backend': ('sdpa', 'manual'),
    'attention_mask': ('causal', 'document'),
}


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int = None  # None = n_head (multi-head); 1 = multi-query
    normalization: str = 'layernorm'
    norm_eps: float = 1e-5
    activation: str = 'gelu_tanh'  # used by the standard FFN; swiglu/geglu fix their own gate
    position_encoding: str = 'learned_absolute'
    rope_theta: float = 10000.0
    norm_position: str = 'pre'
    ffn_type: str = 'standard'
    ffn_hidden: int = None  # None = 4*n_embd (standard) or 8/3*n_embd rounded up (gated)
    ffn_multiple_of: int = 256
    bias: bool = True  # bias in every Linear (norm biases follow `normalization`)
    weight_tying: bool = True
    dropout: float = 0.0
    attention_backend: str = 'sdpa'
    attention_mask: str = 'causal'  # document: a token sees only earlier tokens of its own document (training)
    qk_norm: bool = False
    n_expert: int = 0  # 0 = dense FFN
    n_expert_per_token: int = 2
    moe_intermediate_size: int = None  # None = the dense FFN hidden size
    moe_aux_loss_coef: float = 0.01
    gradient_checkpointing: bool = False
    init_std: float = 0.02

    def __post_init__(self):
        def bad(name, allowed):
            raise ValueError(f"{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                bad(name, ', '.join(allowed))
        for name in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd'):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, 'a positive integer')
        if self.n_embd % self.n_head:
            bad('n_embd', f'a multiple of n_head={self.n_head}')
        # the experts' grouped matmuls (grouped_mm.py): torch 2.8 has torch._grouped_mm for Hopper GPUs only
        if self.n_expert and (not hasattr(torch, '_grouped_mm')
                              or torch.torch_version.TorchVersion(torch.__version__) < '2.9'):
            bad('n_expert', f'0 (dense) with torch {torch.__version__}: MoE needs torch>=2.9')
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            bad('n_kv_head', f'a divisor of n_head={self.n_head} (or None)')
        if self.position_encoding == 'rope' and self.head_dim % 2:
            bad('n_embd', f'n_embd/n_head even for rope (head size is {self.head_dim})')
        if not 0.0 <= self.dropout < 1.0:
            bad('dropout', '0 <= dropout < 1')
        if self.n_expert < 0:
            bad('n_expert', '0 (dense) or a positive integer')
        if self.n_expert and not 1 <= self.n_expert_per_token <= self.n_expert:
            bad('n_expert_per_token', f'1..n_expert={self.n_expert}')
        for name in ('ffn_hidden', 'moe_intermediate_size'):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                bad(name, 'a positive integer or None')
        if self.n_expert and (self.n_embd % 8 or self.expert_hidden_size % 8):  # grouped matmuls need 16-byte rows
            bad('n_embd' if self.n_embd % 8 else 'moe_intermediate_size' if self.moe_intermediate_size else 'ffn_hidden',
                f'a multiple of 8 with n_expert > 0 (n_embd={self.n_embd}, expert hidden size={self.expert_hidden_size})')
        if self.ffn_multiple_of < 1:
            bad('ffn_multiple_of', 'a positive integer')

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def kv_heads(self):
        return self.n_kv_head or self.n_head

    @property
    def ffn_hidden_size(self):
        if self.ffn_hidden:
            return self.ffn_hidden
        if self.ffn_type == 'standard':
            return 4 * self.n_embd
        # gated FFNs have three matrices: 2/3 of 4d keeps the parameter count of a 4d standard FFN
        hidden = int(8 * self.n_embd / 3)
        return self.ffn_multiple_of * math.ceil(hidden / self.ffn_multiple_of)

    @property
    def expert_hidden_size(self):
        return self.moe_intermediate_size or self.ffn_hidden_size

    @classmethod
    def from_preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"arch_preset={name!r} is invalid; allowed: {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        for key in overrides:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                raise ValueError(f"unknown model field {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ''))
        return cls(**{**PRESETS[name], **overrides})

    def architecture_name(self):
        """A readable name that differs whenever the computed function differs.
        attention_backend and gradient_checkpointing change how, not what, so they are left out."""
        parts = [f'{self.n_layer}L', f'{self.n_head}H']
        if self.kv_heads != self.n_head:
            parts.append(f'{self.kv_heads}KV')
        parts.append(f'{self.n_embd}D')
        pos = {'learned_absolute': 'AbsPos', 'rope': 'RoPE', 'none': 'NoPos'}[self.position_encoding]
        if self.position_encoding == 'rope' and self.rope_theta != 10000.0:
            pos += f'{self.rope_theta:g}'
        parts.append(pos)
        parts.append({'layernorm': 'LN', 'layernorm_nobias': 'LNNoBias', 'rmsnorm': 'RMS'}[self.normalization])
        if self.norm_eps != 1e-5:
            parts.append(f'eps{self.norm_eps:g}')
        parts.append('Bias' if self.bias else 'NB')
        ffn = {'swiglu': 'SwiGLU', 'geglu': 'GeGLU'}.get(self.ffn_type) or {
            'gelu': 'GELU', 'gelu_tanh': 'GELUTanh', 'silu': 'SiLU', 'relu': 'ReLU',
            'relu2': 'ReLU2', 'leaky_relu': 'LeakyReLU'}[self.activation]
        default_hidden = GPTConfig(n_embd=self.n_embd, n_head=self.n_head, ffn_type=self.ffn_type).ffn_hidden_size
        if self.ffn_hidden_size != default_hidden:
            ffn += f'{self.ffn_hidden_size}'
        parts.append(ffn)
        parts.append('PreNorm' if self.norm_position == 'pre' else 'PostNorm')
        if self.qk_norm:
            parts.append('QKNorm')
        parts.append('Tied' if self.weight_tying else 'Untied')
        if self.n_expert:
            moe = f'MoE{self.n_expert}x{self.n_expert_per_token}'
            if self.expert_hidden_size != self.ffn_hidden_size:
                moe += f'h{self.expert_hidden_size}'
            parts.append(moe)
        if self.dropout:
            parts.append(f'Drop{self.dropout:g}')
        if self.attention_mask == 'document':
            parts.append('DocMask')
        return '-'.join(parts)


# Every preset is 124M-class by default (12 layers, 768 wide, GPT-2 vocabulary); configs resize them.
# gpt2 is pre-norm with the tanh GELU because that is what the released GPT-2 weights use.
PRESETS = {
    'gpt2': dict(normalization='layernorm', activation='gelu_tanh', position_encoding='learned_absolute',
                 norm_position='pre', ffn_type='standard', bias=True, weight_tying=True),
    'llama': dict(normalization='rmsnorm', activation='silu', position_encoding='rope', norm_position='pre',
                  ffn_type='swiglu', bias=False, weight_tying=False),
    'team': dict(normalization='rmsnorm', activation='silu', position_encoding='rope', norm_position='pre',
                 ffn_type='swiglu', bias=False, weight_tying=False),
    'hybrid': dict(normalization='layernorm', activation='gelu', position_encoding='rope', norm_position='pre',
                   ffn_type='standard', bias=False, weight_tying=True),
    'moe': dict(normalization='rmsnorm', activation='silu', position_encoding='rope', norm_position='pre',
                ffn_type='swiglu', bias=False, weight_tying=False, n_kv_head=4,
                n_expert=8, n_expert_per_token=2),
}


class Norm(nn.Module):
    def __init__(self, dim, kind, eps):
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if kind == 'layernorm' else None

    def forward(self, x):
        if self.kind == 'rmsnorm':
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def activate(x, activation):
    if activation == 'gelu':
        return F.gelu(x)
    if activation == 'gelu_tanh':
        return F.gelu(x, approximate='tanh')
    if activation == 'silu':
        return F.silu(x)
    if activation == 'relu':
        return F.relu(x)
    if activation == 'relu2':
        return F.relu(x).square()
    if activation == 'leaky_relu':
        return F.leaky_relu(x, 0.01)
    raise ValueError(f"activation={activation!r} is invalid; allowed: {', '.join(CHOICES['activation'])}")


def ffn(x, config, w_up, b_up, w_gate, b_gate, w_down, b_down):
    """The feed-forward maths, shared by the dense FFN and every MoE expert."""
    if config.ffn_type == 'standard':
        h = activate(F.linear(x, w_up, b_up), config.activation)
    else:  # gated: act(x W_gate) * (x W_up)
        gate_act = 'silu' if config.ffn_type == 'swiglu' else 'gelu'
        h = activate(F.linear(x, w_gate, b_gate), gate_act) * F.linear(x, w_up, b_up)
    return F.linear(h, w_down, b_down)


def rope_tables(config, length, device=None):
    """cos/sin of shape (length, head_dim/2). Rotation pairs are (i, i + head_dim/2): the 'rotate halves'
    layout Hugging Face Llama uses, so weights convert without permuting q/k."""
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2, device=device).float() / config.head_dim))
    angles = torch.outer(torch.arange(length, device=device).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    # x: (B, heads, T, head_dim); cos/sin: (T, head_dim/2)
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.config, self.layer = config, layer
        hd = config.head_dim
        # one fused projection: n_head query heads, then kv_heads key heads and kv_heads value heads
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + 2 * config.kv_heads) * hd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        if config.qk_norm:
            self.q_norm = Norm(hd, config.normalization, config.norm_eps)
            self.k_norm = Norm(hd, config.normalization, config.norm_eps)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, cache=None, doc_mask=None):
        c = self.config
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split([c.n_head * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim], dim=2)
        q = q.view(B, T, c.n_head, c.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)
        k = k.view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        v = v.view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        offset = 0
        if cache is not None:
            offset = cache.pos
            k, v = cache.update(self.layer, k, v)
        # queries sit at positions offset..offset+T-1 and may see keys at positions <= their own
        mask = doc_mask  # attention_mask='document': (B, 1, T, T) block-diagonal causal or a BlockMask; or None
        if offset and T > 1:
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=offset)
        dropout_p = c.dropout if self.training else 0.0
        if isinstance(mask, document_attention.BlockMask):  # FlexAttention (CUDA): see document_attention.py
            y = document_attention.flex(q, k, v, mask)
        elif c.attention_backend == 'sdpa':
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                               is_causal=(mask is None and T > 1),
                                               enable_gqa=c.kv_heads != c.n_head)
        else:  # manual: the textbook masked softmax, for study
            if c.kv_heads != c.n_head:
                k = k.repeat_interleave(c.n_head // c.kv_heads, dim=1)
                v = v.repeat_interleave(c.n_head // c.kv_heads, dim=1)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(c.head_dim)
            if mask is None:
                mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=k.size(2) - T)
            att = att.masked_fill(~mask, float('-inf'))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, c.n_embd)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        hidden = config.ffn_hidden_size
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)  # up
        self.c_gate = nn.Linear(config.n_embd, hidden, bias=config.bias) if config.ffn_type != 'standard' else None
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)  # down
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        gate = self.c_gate
        y = ffn(x, self.config, self.c_fc.weight, self.c_fc.bias, gate and gate.weight, gate and gate.bias,
                self.c_proj.weight, self.c_proj.bias)
        return self.dropout(y), None


MOE_ALIGN = 16  # rows per expert group are padded to a multiple of this: grouped-GEMM kernels need aligned groups


class MoE(nn.Module):
    """Top-k softmax router over n_expert FFNs (experts stacked in 3-D tensors). dispatch_grouped fixes every
    shape by the batch, not by the routing, so the layer compiles into one graph, runs on the meta device and
    never waits for the host; dispatch_loop, one matmul per expert, is the readable reference it must equal."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        E, D, H = config.n_expert, config.n_embd, config.expert_hidden_size
        self.router = nn.Linear(D, E, bias=False)
        self.w_up = nn.Parameter(torch.empty(E, H, D))
        self.w_gate = nn.Parameter(torch.empty(E, H, D)) if config.ffn_type != 'standard' else None
        self.w_down = nn.Parameter(torch.empty(E, D, H))
        self.b_up = nn.Parameter(torch.zeros(E, H)) if config.bias else None
        self.b_gate = nn.Parameter(torch.zeros(E, H)) if config.bias and self.w_gate is not None else None
        self.b_down = nn.Parameter(torch.zeros(E, D)) if config.bias else None
        self.dropout = nn.Dropout(config.dropout)
        self.register_buffer('expert_fraction', torch.zeros(E), persistent=False)

    def forward(self, x):
        c = self.config
        B, T, D = x.shape
        x = x.reshape(-1, D)
        # the router in fp32 even under bf16/fp16 autocast: rounded logits send 0.4-2.6% of tokens to other
        # experts (bench/moe_router_precision.py); the matmul is D x E, a tiny share of the layer's FLOPs
        full_precision = torch.autocast(x.device.type, enabled=False) \
            if torch.amp.is_autocast_available(x.device.type) else nullcontext()  # (the meta device has none)
        with full_precision:
            wide = torch.promote_types(x.dtype, torch.float32)
            logits = F.linear(x.to(wide), self.router.weight.to(wide))
        probs = F.softmax(logits, dim=-1)  # (N, E), fp32 or wider
        weights, experts = probs.topk(c.n_expert_per_token, dim=-1)  # (N, k)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        flat_expert = experts.flatten()  # (N*k,): slot i belongs to token i // k
        counts = torch.zeros(c.n_expert, dtype=torch.long, device=x.device).scatter_add_(
            0, flat_expert, torch.ones_like(flat_expert))  # not bincount: its output size depends on the data
        fraction = counts.float() / flat_expert.numel()
        with torch.no_grad():
            self.expert_fraction.copy_(fraction)
        # Switch Transformer load-balancing loss: E * sum_e (share of routed slots) * (mean router prob); 1.0 when balanced
        aux_loss = c.n_expert * (fraction * probs.mean(dim=0)).sum()
        out = self.dispatch(x, flat_expert, counts, weights.flatten())
        return self.dropout(out.view(B, T, D)), aux_loss

    def dispatch(self, x, flat_expert, counts, flat_weight):
        # on a CPU the loop is faster (torch's CPU grouped matmul is itself a loop, ~1.4x slower than ours with
        # the padding) and waiting for the host costs nothing; compiled, on the meta device or a GPU: grouped
        if x.device.type == 'cpu' and not torch.compiler.is_compiling():
            return self.dispatch_loop(x, flat_expert, counts, flat_weight)
        return self.dispatch_grouped(x, flat_expert, counts, flat_weight)

    def dispatch_grouped(self, x, flat_expert, counts, flat_weight):
        c, E, A = self.config, self.config.n_expert, MOE_ALIGN
        slots = flat_expert.numel()
        order = flat_expert.argsort(stable=True)  # sorted slot -> routed slot
        token = order // c.n_expert_per_token  # the token each sorted slot comes from
        sorted_expert = flat_expert[order]
        # each expert's rows start at a multiple of A; a static row count (slots rounded up, + E*A) bounds every
        # routing and keeps the last group, which takes the tail, a multiple of A too
        padded = (counts + A - 1) // A * A
        ends = padded.cumsum(0)
        first_slot = counts.cumsum(0) - counts  # where each expert's slots begin in sorted order
        row = (ends - padded)[sorted_expert] + torch.arange(slots, device=x.device) - first_slot[sorted_expert]
        rows = (slots + A - 1) // A * A + E * A
        ends = torch.cat([ends[:-1], ends.new_full((1,), rows)]).to(torch.int32)  # the last group takes the tail
        device_type = x.device.type  # under autocast the grouped matmuls run in its dtype, like F.linear
        autocasting = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocasting else x.dtype
        xs = x.new_zeros(rows, x.size(1), dtype=dtype).index_copy(0, row, x[token].to(dtype))
        row_expert = torch.searchsorted(ends, torch.arange(rows, device=x.device, dtype=torch.int32), right=True)

        def linear(h, w, b):  # every expert's h @ w[e].T (+ b[e]) in one grouped matmul
            y = grouped_mm(h, w.to(dtype).transpose(-2, -1), ends)
            return y if b is None else y + b.to(dtype)[row_expert.clamp(max=E - 1)]

        if c.ffn_type == 'standard':
            h = activate(linear(xs, self.w_up, self.b_up), c.activation)
        else:
            gate_act = 'silu' if c.ffn_type == 'swiglu' else 'gelu'
            h = activate(linear(xs, self.w_gate, self.b_gate), gate_act) * linear(xs, self.w_up, self.b_up)
        ys = linear(h, self.w_down, self.b_down)[row] * flat_weight[order].unsqueeze(-1).to(dtype)
        return torch.zeros_like(x, dtype=dtype).index_add_(0, token, ys)

    def dispatch_loop(self, x, flat_expert, counts, flat_weight):
        """The reference: one FFN call per expert over its tokens (counts.tolist() waits for the host)."""
        c = self.config
        order = flat_expert.argsort(stable=True)
        token = order // c.n_expert_per_token
        xs = x[token]
        # unbind once: indexing w[e] per expert would make backward build a full-size zero gradient per expert
        per_expert = [t.unbind(0) if t is not None else [None] * c.n_expert
                      for t in (self.w_up, self.b_up, self.w_gate, self.b_gate, self.w_down, self.b_down)]
        outs = [ffn(xe, c, *(w[e] for w in per_expert)) for e, xe in enumerate(xs.split(counts.tolist()))]
        ys = torch.cat(outs) * flat_weight[order].unsqueeze(-1)
        return torch.zeros_like(x).index_add_(0, token, ys)


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.config = config
        self.norm_1 = Norm(config.n_embd, config.normalization, config.norm_eps)
        self.attn = Attention(config, layer)
        self.norm_2 = Norm(config.n_embd, config.normalization, config.norm_eps)
        self.ffn = MoE(config) if config.n_expert else MLP(config)

    def forward(self, x, rope=None, cache=None, doc_mask=None):
        if self.config.norm_position == 'pre':
            x = x + self.attn(self.norm_1(x), rope, cache, doc_mask)
            y, aux_loss = self.ffn(self.norm_2(x))
            return x + y, aux_loss
        # post-norm (original Transformer): normalize after each residual add
        x = self.norm_1(x + self.attn(x, rope, cache, doc_mask))
        y, aux_loss = self.ffn(x)
        return self.norm_2(x + y), aux_loss


class GPT(nn.Module):
    """Built on the default device; under `with torch.device('meta'):` no memory is taken and no weight drawn:
    shard it (FSDP) or not, then `to_empty(device=...)` and `init_weights()`, and it equals the direct build."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        device = torch.get_default_device()
        with torch.device('meta'):  # the layers' own default inits would only be overwritten: skip them
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)
            self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.position_encoding == 'learned_absolute' else None
            self.drop = nn.Dropout(config.dropout)
            self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
            # post-norm blocks already end in a norm, so only pre-norm needs a final one
            self.norm_f = Norm(config.n_embd, config.normalization, config.norm_eps) if config.norm_position == 'pre' else None
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            if config.weight_tying:
                self.lm_head.weight = self.wte.weight
            if config.position_encoding == 'rope':
                self.register_buffer('rope_cos', torch.empty(config.block_size, config.head_dim // 2), persistent=False)
                self.register_buffer('rope_sin', torch.empty(config.block_size, config.head_dim // 2), persistent=False)
        self.ce_loss = None  # the last forward's pure cross-entropy (detached), comparable across architectures
        self.aux_loss = None  # the last forward's MoE load-balancing loss (detached)
        if device.type != 'meta':
            self.to_empty(device=device)
            self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Every parameter and buffer, in place. GPT-2: N(0, init_std) everywhere, residual output projections
        scaled by 1/sqrt(2*n_layer). Random values are drawn on the CPU, one tensor at a time in a fixed order, so
        a seed gives the same model on any device, and FSDP ranks (DTensor shards) keep their part of it."""
        c = self.config
        std, residual_std = c.init_std, c.init_std / math.sqrt(2 * c.n_layer)
        if c.weight_tying and self.lm_head.weight is not self.wte.weight:  # to_empty made two tensors: tie again
            self.lm_head.weight = self.wte.weight

        def normal(param, sd):
            full = torch.empty(param.shape, device='cpu').normal_(0.0, sd)
            if hasattr(param, 'device_mesh'):  # an FSDP shard: this rank's slice of the full tensor
                from torch.distributed.tensor import distribute_tensor
                param.to_local().copy_(distribute_tensor(full, param.device_mesh, param.placements,
                                                         src_data_rank=None).to_local())
            else:
                param.copy_(full)

        for name, module in self.named_modules():
            if isinstance(module, Norm):
                module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                normal(module.weight, std)
            elif isinstance(module, nn.Linear) and not (module is self.lm_head and c.weight_tying):
                normal(module.weight, residual_std if name.endswith('c_proj') else std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, MoE):
                for w, sd in ((module.w_up, std), (module.w_gate, std), (module.w_down, residual_std)):
                    if w is not None:
                        normal(w, sd)
                for b in (module.b_up, module.b_gate, module.b_down):
                    if b is not None:
                        b.zero_()
                module.expert_fraction.zero_()
        if c.position_encoding == 'rope':
            # built on the CPU whatever the default device (train.py builds under `with torch.device(...)`), then
            # copied: the same tables bit for bit on every device and under FSDP
            cos, sin = rope_tables(c, c.block_size, device='cpu')
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def get_num_params(self, non_embedding=True):
        """Non-embedding leaves out the position table and, when untied, the input token table
        (lookups cost no FLOPs); the output head stays in because it is a matmul."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
            if not self.config.weight_tying:
                n -= self.wte.weight.numel()
        return n

    def forward(self, idx, targets=None, cache=None, keep=None, document_ids=None):
        """document_ids (B, T): each token's document, for attention_mask='document' (else ignored); without
        them (generation, scoring) the input is one document."""
        c = self.config
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > c.block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size={c.block_size}")
        doc_mask = None
        if c.attention_mask == 'document' and document_ids is not None:
            if cache is not None:
                raise ValueError("document_ids cannot be used with a KV cache")
            doc_mask = document_attention.mask_for(document_ids, c, self.training)  # built once, for all layers
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T]) if c.position_encoding == 'rope' else None
        x = self.drop(x)
        aux_losses = []
        for block in self.blocks:
            if c.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, aux_loss = checkpoint(block, x, rope, None, doc_mask, use_reentrant=False)
            else:
                x, aux_loss = block(x, rope, cache, doc_mask)
            if aux_loss is not None:
                aux_losses.append(aux_loss)
        if cache is not None:
            cache.pos += T
            x = x[:, -1:, :]  # generation only needs the next-token logits
        if keep is not None:  # (rows, positions): logits there only, (N, vocab) (scoring continuations)
            x = x[keep]
        if self.norm_f is not None:
            x = self.norm_f(x)
        logits = self.lm_head(x)
        if targets is None:
            return logits, None
        logits_32 = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 loss under bf16/fp16 autocast
        loss = F.cross_entropy(logits_32.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        self.ce_loss = loss.detach()
        if aux_losses:
            aux = torch.stack(aux_losses).mean()  # mean over MoE layers, so the coefficient does not scale with depth
            self.aux_loss = aux.detach()
            loss = loss + c.moe_aux_loss_coef * aux
        return logits, loss

    def expert_fractions(self):
        """Per-layer share of routed token slots per expert (each row sums to 1), for logging."""
        return [b.ffn.expert_fraction for b in self.blocks if isinstance(b.ffn, MoE)]

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward) at seq_len (default block_size): flops_breakdown's sum."""
        return sum(self.flops_breakdown(seq_len))

    def flops_breakdown(self, seq_len=None):
        """(attention, FFN, output head) training FLOPs per token at seq_len (default block_size).
        Convention: what torch.utils.flop_counter counts, i.e. 2*m*n*k per matmul (biases, norms, activations,
        softmax and embedding lookups free), attention scores over the full T x T square (the causal half is
        not discounted), backward = 2x forward. MoE counts only the active experts plus the router."""
        c = self.config
        T = seq_len or c.block_size
        D, hd = c.n_embd, c.head_dim
        attn = 2 * D * (c.n_head + 2 * c.kv_heads) * hd + 2 * D * D  # qkv + output projections
        attn += 2 * 2 * c.n_head * hd * T  # q@k^T and att@v
        mats = 2 if c.ffn_type == 'standard' else 3
        if c.n_expert:
            ffn = c.n_expert_per_token * mats * 2 * D * c.expert_hidden_size + 2 * D * c.n_expert
        else:
            ffn = mats * 2 * D * c.ffn_hidden_size
        return 3 * c.n_layer * attn, 3 * c.n_layer * ffn, 3 * 2 * D * c.vocab_size

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, optimizer='adamw',
                             zero_redundancy=False):
        """A list of optimizers. adamw: one AdamW. muon: torch.optim.Muon for the 2-D weight matrices inside the
        blocks (attention and FFN projections) plus AdamW for the rest (embeddings, head, norms, biases, router,
        3-D expert stacks). Weight decay only on >= 2-D weights, never on biases. zero_redundancy: ZeRO-1 over AdamW."""
        if optimizer not in ('adamw', 'muon'):
            raise ValueError(f"optimizer={optimizer!r} is invalid; allowed: adamw, muon")
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        # biases of any shape (MoE experts' are 2-D: experts x width) are neither decayed nor orthogonalized
        bias = {id(p) for n, p in named if n.endswith('bias') or n.rsplit('.', 1)[-1].startswith('b_')}
        muon = [p for n, p in named if optimizer == 'muon' and p.dim() == 2 and n.startswith('blocks.')
                and '.router.' not in n and id(p) not in bias]
        muon_ids = {id(p) for p in muon}
        rest = [p for _, p in named if id(p) not in muon_ids]
        groups = [{'params': [p for p in rest if p.dim() >= 2 and id(p) not in bias], 'weight_decay': weight_decay},
                  {'params': [p for p in rest if p.dim() < 2 or id(p) in bias], 'weight_decay': 0.0}]
        # the fused kernel is one launch for all parameters: faster on GPUs and on CPUs alike
        fused = device_type in ('cuda', 'cpu') and 'fused' in inspect.signature(torch.optim.AdamW).parameters
        kwargs = dict(lr=learning_rate, betas=betas, **({'fused': True} if fused else {}))
        if zero_redundancy:  # ZeRO-1: each rank keeps the AdamW state of its share of the parameters
            from torch.distributed.optim import ZeroRedundancyOptimizer
            optimizers = [ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, **kwargs)]
        else:
            optimizers = [torch.optim.AdamW(groups, **kwargs)]
        if muon:
            # match_rms_adamw scales Muon's orthogonalized update to AdamW's size, so one learning_rate serves both
            optimizers.append(torch.optim.Muon(muon, lr=learning_rate, weight_decay=weight_decay,
                                               adjust_lr_fn='match_rms_adamw'))
        return optimizers

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, use_cache=True):
        """Sample max_new_tokens after idx (B, T). The KV cache makes each new token one position of work;
        once the context outgrows block_size the window is cropped to the last block_size tokens and
        recomputed each step, exactly as uncached generation would."""
        c = self.config
        cache = None
        for _ in range(max_new_tokens):
            if use_cache and idx.size(1) <= c.block_size:
                if cache is None:
                    cache = KVCache(c, idx.size(0), idx.device, self.lm_head.weight.dtype)
                    logits, _ = self(idx, cache=cache)
                else:
                    logits, _ = self(idx[:, -1:], cache=cache)
            else:
                logits, _ = self(idx[:, -c.block_size:])
            logits = logits[:, -1, :].float()
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                next_token = sample_from_logits(logits / temperature, top_k, top_p, generator)
            idx = torch.cat([idx, next_token], dim=1)
        return idx


def sample_from_logits(logits, top_k=None, top_p=None, generator=None):
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float('-inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        cum = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cum - F.softmax(sorted_logits, dim=-1) > top_p  # keep the smallest set whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float('-inf'))
        logits = torch.full_like(logits, float('-inf')).scatter(-1, sorted_idx, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def count_params(config, non_embedding=False):
    """Parameter count from the config alone; equals sum(p.numel()) of GPT(config)."""
    c = config
    D, hd, V = c.n_embd, c.head_dim, c.vocab_size
    norm = D * (2 if c.normalization == 'layernorm' else 1)
    head_norm = hd * (2 if c.normalization == 'layernorm' else 1)
    b = 1 if c.bias else 0
    attn = D * (c.n_head + 2 * c.kv_heads) * hd + b * (c.n_head + 2 * c.kv_heads) * hd + D * D + b * D
    attn += 2 * head_norm if c.qk_norm else 0
    mats = 2 if c.ffn_type == 'standard' else 3
    if c.n_expert:
        H = c.expert_hidden_size
        ffn_params = c.n_expert * (mats * D * H + b * ((mats - 1) * H + D)) + D * c.n_expert
    else:
        H = c.ffn_hidden_size
        ffn_params = mats * D * H + b * ((mats - 1) * H + D)
    total = c.n_layer * (attn + ffn_params + 2 * norm)
    total += norm if c.norm_position == 'pre' else 0
    wpe = c.block_size * D if c.position_encoding == 'learned_absolute' else 0
    total += V * D + wpe + (0 if c.weight_tying else V * D)
    if non_embedding:
        total -= wpe + (0 if c.weight_tying else V * D)
    return total


def list_presets():
    """The presets as text: each one's architecture name and parameter count at its default size, and its fields."""
    lines = []
    for name, fields_set in PRESETS.items():
        c = GPTConfig.from_preset(name)
        lines.append(f"{name:8s} {c.architecture_name()}, {count_params(c) / 1e6:.1f}M parameters")
        lines.append(' ' * 9 + ', '.join(f"{k}={v!r}" for k, v in fields_set.items()))
    return '\n'.join(lines)


if __name__ == '__main__':  # python model.py --presets
    import sys
    if sys.argv[1:] != ['--presets']:
        print("usage: python model.py --presets   (the architecture presets; train.py's arch_preset picks one)",
              file=sys.stderr)
        sys.exit(2)
    print(list_presets())

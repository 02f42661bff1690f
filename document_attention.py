"""
attention_mask='document': a token attends only to earlier tokens of its own document.

On CUDA this runs FlexAttention, compiled once, with a block mask built once per forward from the tokens'
document ids and shared by every layer: 128 x 128 blocks that are wholly masked (other documents, the upper
triangle) are skipped, wholly visible ones run without the mask. Everywhere else the mask is a boolean
block-diagonal causal (B, 1, T, T) tensor given to SDPA as attn_mask (or to the manual backend): on the CPU
FlexAttention has no backward in torch 2.13, it has no dropout, and its CUDA kernel needs head size >= 16.
"""
import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

FLEX = None  # None: FlexAttention on CUDA only; True/False force it on or off (tests run its forward on the CPU)
_compiled_flex = None


def uses_flex(config, device_type, training):
    """Whether attention_mask='document' runs through FlexAttention for this model on this device."""
    on_device = device_type == 'cuda' if FLEX is None else FLEX
    return (on_device and config.attention_mask == 'document' and config.attention_backend == 'sdpa'
            and config.head_dim >= 16 and not (training and config.dropout > 0))  # flex has no dropout


def mask_for(document_ids, config, training):
    """The mask all layers share: a FlexAttention BlockMask or a (B, 1, T, T) boolean tensor."""
    if uses_flex(config, document_ids.device.type, training):
        return block_mask(document_ids)
    return document_mask(document_ids)


def document_mask(document_ids):
    """(B, 1, T, T) boolean: query t may see key s when s <= t and both are in the same document."""
    T = document_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()
    return ((document_ids.unsqueeze(2) == document_ids.unsqueeze(1)) & causal).unsqueeze(1)


def block_mask(document_ids):
    """document_mask(document_ids) as FlexAttention's BlockMask (the same for every head)."""
    B, T = document_ids.shape

    def same_document_causal(b, h, q, kv):
        return (document_ids[b, q] == document_ids[b, kv]) & (kv <= q)
    return create_block_mask(same_document_causal, B, None, T, T, device=document_ids.device)


def flex(q, k, v, mask):
    """FlexAttention of q (B, n_head, T, hd) over k, v (B, kv_heads, T, hd) under a BlockMask."""
    global _compiled_flex
    attend = flex_attention  # inside a compiled model (compile=True) it is compiled with the rest
    if q.device.type == 'cuda' and not torch.compiler.is_compiling():
        if _compiled_flex is None:  # uncompiled it would materialize the whole score matrix
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        attend = _compiled_flex
    # (on the CPU, forward only, compiling takes seconds per shape: tests run the uncompiled reference)
    # contiguous: compiled inside a model on the CPU (torch 2.13), q and k fresh from RoPE and v a transposed view
    # of the fused projection gave wrong outputs; a copy of v is small beside the attention
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return attend(q, k, v, block_mask=mask, enable_gqa=q.size(1) != k.size(1))


def why_flex_fails(config, device, dtype):
    """None if a small FlexAttention forward and backward run (and compile) on this device, else the error in one
    line. Run once at start-up, so a missing compiler toolchain is one line there, not a traceback mid-training."""
    try:
        hd, T = config.head_dim, 128
        ids = torch.zeros(1, T, dtype=torch.long, device=device)
        ids[:, T // 2:] = 1  # two documents
        # zeros, as perf.py's SDPA probe: nothing drawn from the random generators a run's seed sets
        q = torch.zeros(1, config.n_head, T, hd, device=device, dtype=dtype, requires_grad=True)
        k, v = (torch.zeros(1, config.kv_heads, T, hd, device=device, dtype=dtype) for _ in range(2))
        flex(q, k, v, block_mask(ids)).sum().backward()
        return None
    except Exception as e:  # noqa: BLE001 (inductor, Triton and the C compiler raise many kinds)
        e = getattr(e, 'inner_exception', None) or e  # BackendCompilerFailed's own first line is "... raised:"
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]


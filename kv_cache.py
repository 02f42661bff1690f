"""The key/value cache that makes each generated token one position of work (GPT.generate)."""
import torch


class KVCache:
    """Per-layer key/value buffers for generation; `pos` is how many positions are filled."""

    def __init__(self, config, batch_size, device, dtype):
        shape = (config.n_layer, batch_size, config.kv_heads, config.block_size, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0

    def update(self, layer, k, v):
        t = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + t] = k
        self.v[layer, :, :, self.pos:self.pos + t] = v
        return self.k[layer, :, :, :self.pos + t], self.v[layer, :, :, :self.pos + t]

"""What the GPU paths need, checked on the CPU: the MoE with static shapes (equal to the per-expert loop, on the
meta device, compiled as one graph), every preset compiled without graph breaks, and models built on the meta
device equal to the direct build, in one process and sharded by FSDP."""
import json
import re
import os
import subprocess
import sys

import pytest
import torch

import model as M
from model import GPT, GPTConfig, PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=61)


def tiny(preset, **kw):
    return GPTConfig.from_preset(preset, **{**TINY, **({} if preset == 'gpt2' else {'n_kv_head': 2}), **kw})


def routing(tokens, n_expert, k, seed, starve=None):
    """A random top-k routing (expert ids, counts, weights); `starve`: an expert that gets no token."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, n_expert, generator=g)
    if starve is not None:
        logits[:, starve] = -1e9
    weights, experts = logits.softmax(-1).topk(k, dim=-1)
    flat = experts.flatten()
    return flat, torch.bincount(flat, minlength=n_expert), (weights / weights.sum(-1, keepdim=True)).flatten()


@pytest.mark.parametrize('ffn_type,bias,k', [('swiglu', False, 2), ('standard', True, 1), ('geglu', True, 3)])
def test_grouped_dispatch_equals_the_per_expert_loop(ffn_type, bias, k):
    torch.manual_seed(0)
    moe = M.MoE(GPTConfig(n_embd=24, n_head=2, ffn_type=ffn_type, bias=bias, n_expert=5, n_expert_per_token=k,
                          moe_intermediate_size=40))
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(37, 24, requires_grad=True)  # 37 tokens: no expert's group is a multiple of the alignment
    flat, counts, weights = routing(37, 5, k, seed=1, starve=2)
    assert counts[2] == 0
    params = [x] + [p for p in moe.parameters() if p is not moe.router.weight]
    out, ref = moe.dispatch_grouped(x, flat, counts, weights), moe.dispatch_loop(x, flat, counts, weights)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_grouped_dispatch_gradcheck():
    torch.manual_seed(0)
    moe = M.MoE(GPTConfig(n_embd=8, n_head=2, ffn_type='swiglu', bias=True, n_expert=3, moe_intermediate_size=8))
    moe = moe.double()
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.5)
    flat, counts, weights = routing(5, 3, 2, seed=2)
    x = torch.randn(5, 8, dtype=torch.double, requires_grad=True)
    params = (x, moe.w_up, moe.w_gate, moe.w_down, moe.b_up, moe.b_gate, moe.b_down)

    def f(x, *weights_):
        for name, w in zip(('w_up', 'w_gate', 'w_down', 'b_up', 'b_gate', 'b_down'), weights_):
            setattr(moe, name, w)
        return moe.dispatch_grouped(x, flat, counts, weights.double())
    for name in ('w_up', 'w_gate', 'w_down', 'b_up', 'b_gate', 'b_down'):
        delattr(moe, name)  # plain attributes from here on, so gradcheck can feed its own tensors
    assert torch.autograd.gradcheck(f, params)


def test_moe_forward_and_backward_run_on_the_meta_device():
    with torch.device('meta'):
        model = GPT(tiny('moe', bias=True))
        idx = torch.zeros(3, 16, dtype=torch.long)
        logits, loss = model(idx, idx)
        loss.backward()
    assert logits.device.type == 'meta' and logits.shape == (3, 16, 61)
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def _loss_and_grads(model, idx):
    model.zero_grad(set_to_none=True)
    _, loss = model(idx, idx)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize('preset', list(PRESETS))
def test_every_preset_compiles_as_one_graph(preset):
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward like inductor does,
    without its code generation (the MoE through inductor is the next test)."""
    torch.manual_seed(0)
    model = GPT(tiny(preset))
    idx = torch.randint(0, 61, (2, 16))
    expected = _loss_and_grads(model, idx)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    loss, grads = _loss_and_grads(compiled, idx)
    torch.testing.assert_close(loss, expected[0])
    for a, b in zip(grads, expected[1]):
        torch.testing.assert_close(a, b)


def test_moe_compiles_with_inductor_and_equals_the_loop():
    torch.manual_seed(0)
    moe = M.MoE(tiny('moe'))
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 16, 32)

    def loss_and_grads(layer):
        moe.zero_grad(set_to_none=True)
        out, aux = layer(x)
        (out.square().mean() + aux).backward()
        return out.detach(), [p.grad.clone() for p in moe.parameters()]

    compiled = loss_and_grads(torch.compile(moe, fullgraph=True))
    moe.dispatch = moe.dispatch_loop  # the eager reference: the per-expert loop
    expected = loss_and_grads(moe)
    # inductor's kernels sum in another order, and the order differs with the CPU's vector width (AVX2 here
    # gives 2e-6 on an output near zero, AVX-512 less): float rounding, not a wrong dispatch
    for a, b in zip([compiled[0], *compiled[1]], [expected[0], *expected[1]]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('preset', list(PRESETS))
def test_meta_build_equals_the_direct_build(preset):
    config = tiny(preset, bias=True) if preset == 'moe' else tiny(preset)
    torch.manual_seed(7)
    direct = GPT(config)
    torch.manual_seed(7)
    with torch.device('meta'):
        model = GPT(config)
    assert all(p.device.type == 'meta' for p in model.parameters())
    model.to_empty(device='cpu')
    model.init_weights()
    assert (model.lm_head.weight is model.wte.weight) == config.weight_tying
    a, b = direct.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for x, y in zip(direct.buffers(), model.buffers()):  # rope tables are not in the state dict
        assert torch.equal(x, y)
    torch.manual_seed(8)
    assert not torch.equal(GPT(config).wte.weight, direct.wte.weight)  # the seed decides


FSDP_SCRIPT = r'''
import json, resource, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from model import GPT, GPTConfig
from torch.distributed.fsdp import fully_shard
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
dist.init_process_group('gloo')
big = GPTConfig.from_preset('llama', n_layer=16, n_embd=768, n_head=12, vocab_size=512, block_size=64)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the peak so far
torch.manual_seed(5)
with torch.device('meta'):
    model = GPT(big)
for block in model.blocks:
    fully_shard(block)
fully_shard(model)
model.to_empty(device='cpu')
model.init_weights()
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
full_bytes = 4 * sum(p.numel() for p in model.parameters())  # DTensors: the numel of the whole tensor
for preset in ('gpt2', 'moe'):
    torch.manual_seed(5)
    with torch.device('meta'):
        model = GPT(GPTConfig.from_preset(preset, n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=61))
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    model.to_empty(device='cpu')
    model.init_weights()
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        torch.save(state, f'{sys.argv[2]}/{preset}.pt')
print(json.dumps({'rank': dist.get_rank(), 'grown': grown, 'full_bytes': full_bytes}))
dist.destroy_process_group()
'''


def test_fsdp_builds_on_meta_and_each_rank_holds_its_shards_only(tmp_path):
    script = tmp_path / 'fsdp_init.py'
    script.write_text(FSDP_SCRIPT)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                             str(script), ROOT, str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    # the two ranks print at once, so their lines can run together: each report is read wherever it is
    reports = [json.loads(m) for m in re.findall(r'\{"rank": [^{}]*\}', result.stdout)]
    assert len(reports) == 2
    for r in reports:  # half the weights plus freed temporaries the allocator keeps (~0.6); a whole model is 1.0
        assert r['grown'] < 0.8 * r['full_bytes'], r
    for preset in ('gpt2', 'moe'):  # tied and untied weights, experts
        torch.manual_seed(5)
        direct = GPT(GPTConfig.from_preset(preset, n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=61))
        sharded = torch.load(tmp_path / f'{preset}.pt', weights_only=True)
        reference = direct.state_dict()
        assert sharded.keys() == reference.keys()
        assert all(torch.equal(sharded[k], reference[k]) for k in reference)

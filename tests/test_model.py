import itertools
import os
import runpy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import model as M
from model import GPT, GPTConfig, PRESETS, count_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=61)

# every value of every switch; pairwise coverage is built from these below
SWITCHES = {
    'normalization': ['layernorm', 'layernorm_nobias', 'rmsnorm'],
    'activation': ['gelu', 'gelu_tanh', 'silu', 'relu', 'relu2', 'leaky_relu'],
    'position_encoding': ['learned_absolute', 'rope', 'none'],
    'norm_position': ['pre', 'post'],
    'ffn_type': ['standard', 'swiglu', 'geglu'],
    'bias': [True, False],
    'weight_tying': [True, False],
    'attention_backend': ['sdpa', 'manual'],
    'n_kv_head': [None, 2, 1],
    'qk_norm': [False, True],
    'n_expert': [0, 3],
    'dropout': [0.0, 0.1],
    'gradient_checkpointing': [False, True],
}


def pairwise_configs():
    """Greedy all-pairs: every pair of values of any two switches appears in some config."""
    names = list(SWITCHES)
    uncovered = {(a, va, b, vb) for a, b in itertools.combinations(names, 2)
                 for va in SWITCHES[a] for vb in SWITCHES[b]}
    rows = []
    while uncovered:
        a, va, b, vb = min(uncovered, key=repr)
        row = {a: va, b: vb}
        for name in names:  # fill the rest with the value covering most remaining pairs
            if name in row:
                continue
            def gain(value):
                trial = {**row, name: value}
                return sum(1 for other, ov in trial.items() if other != name and
                           ((name, value, other, ov) in uncovered or (other, ov, name, value) in uncovered))
            row[name] = max(SWITCHES[name], key=gain)
        uncovered -= {(x, row[x], y, row[y]) for x, y in itertools.combinations(names, 2)}
        rows.append(row)
    return rows


PAIRWISE = pairwise_configs()


def tiny(**kw):
    return GPTConfig(**{**TINY, **kw})


def test_pairwise_covers_every_pair():
    names = list(SWITCHES)
    for a, b in itertools.combinations(names, 2):
        seen = {(r[a], r[b]) for r in PAIRWISE}
        assert seen == set(itertools.product(SWITCHES[a], SWITCHES[b]))
    assert len(PAIRWISE) < 40


@pytest.mark.parametrize('switches', PAIRWISE, ids=lambda s: GPTConfig(**TINY, **s).architecture_name())
def test_shapes_loss_and_grads_for_switch_combinations(switches):
    torch.manual_seed(0)
    cfg = tiny(**switches)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, cfg.block_size))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, cfg.block_size, cfg.vocab_size)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    logits, loss = model(idx)
    assert loss is None and logits.shape == (3, cfg.block_size, cfg.vocab_size)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    assert count_params(cfg, non_embedding=True) == model.get_num_params()


# ---- float64 gradient checks of the building blocks ----

def _gradcheck(module, *inputs):
    module = module.double()
    inputs = [t.double().requires_grad_() for t in inputs]
    params = [p for p in module.parameters()]

    def f(*args):
        xs, ps = args[:len(inputs)], args[len(inputs):]
        out = torch.func.functional_call(module, {n: p for (n, _), p in zip(module.named_parameters(), ps)}, xs)
        return out[0] if isinstance(out, tuple) else out
    torch.autograd.gradcheck(f, (*inputs, *[p.detach().clone().requires_grad_() for p in params]),
                             eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('backend', ['sdpa', 'manual'])
@pytest.mark.parametrize('position_encoding,n_kv_head,qk_norm', [
    ('none', None, False), ('rope', None, False), ('rope', 1, True), ('none', 2, False)])
def test_attention_gradcheck(backend, position_encoding, n_kv_head, qk_norm):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=4, n_embd=16, block_size=5, vocab_size=7, attention_backend=backend,
                    position_encoding=position_encoding, n_kv_head=n_kv_head, qk_norm=qk_norm,
                    normalization='rmsnorm')
    attn = M.Attention(cfg, 0)
    rope = M.rope_tables(cfg, 5) if position_encoding == 'rope' else None
    x = torch.randn(2, 5, 16)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            r = None if rope is None else (rope[0].double(), rope[1].double())
            return self.attn(x, r)
    _gradcheck(Wrap(), x)


@pytest.mark.parametrize('kind', ['layernorm', 'layernorm_nobias', 'rmsnorm'])
def test_norm_gradcheck(kind):
    torch.manual_seed(0)
    norm = M.Norm(6, kind, 1e-5)
    with torch.no_grad():
        norm.weight.normal_()
        if norm.bias is not None:
            norm.bias.normal_()
    _gradcheck(norm, torch.randn(3, 6))


@pytest.mark.parametrize('ffn_type,activation', [('standard', a) for a in SWITCHES['activation']] +
                         [('swiglu', 'silu'), ('geglu', 'gelu')])
def test_ffn_gradcheck(ffn_type, activation):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=6, ffn_hidden=10, ffn_type=ffn_type, activation=activation, bias=True)
    _gradcheck(M.MLP(cfg), torch.randn(2, 3, 6))


@pytest.mark.parametrize('ffn_type', ['standard', 'swiglu'])
def test_moe_gradcheck(ffn_type):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, ffn_hidden=8, ffn_type=ffn_type, bias=True,
                    n_expert=4, n_expert_per_token=2)
    moe = M.MoE(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.5)

    class WithAux(torch.nn.Module):  # check the gradient of both outputs: mixture and balancing loss
        def __init__(self):
            super().__init__()
            self.moe = moe

        def forward(self, x):
            y, aux = self.moe(x)
            return y.sum(-1) + aux
    _gradcheck(WithAux(), torch.randn(2, 5, 8))


# ---- behavioural equivalences ----

def _preset(name, **kw):
    return GPTConfig.from_preset(name, **{**TINY, **kw})


@pytest.mark.parametrize('preset', list(PRESETS))
@pytest.mark.parametrize('backend', ['sdpa', 'manual'])
def test_causal_masking(preset, backend):
    torch.manual_seed(0)
    model = GPT(_preset(preset, attention_backend=backend)).eval()
    idx = torch.randint(0, 61, (2, 16))
    base, _ = model(idx)
    for t in (0, 7, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 61
        out, _ = model(changed)
        # MoE regroups tokens per expert when one changes, so allow float rounding, nothing more
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-6, rtol=0, msg=f'position < {t} saw token {t}')
        assert (out[:, t] - base[:, t]).abs().max() > 1e-3


@pytest.mark.parametrize('preset', list(PRESETS))
def test_determinism(preset):
    outs = []
    for _ in range(2):
        torch.manual_seed(1234)
        model = GPT(_preset(preset))
        idx = torch.randint(0, 61, (2, 16))
        outs.append((model.state_dict(), model(idx, idx)))
    sd_a, (logits_a, loss_a) = outs[0]
    sd_b, (logits_b, loss_b) = outs[1]
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert torch.equal(logits_a, logits_b) and torch.equal(loss_a, loss_b)


@pytest.mark.parametrize('preset', list(PRESETS))
def test_sdpa_and_manual_backends_agree(preset):
    torch.manual_seed(0)
    a = GPT(_preset(preset, attention_backend='sdpa')).eval()
    b = GPT(_preset(preset, attention_backend='manual')).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 61, (2, 16))
    torch.testing.assert_close(a(idx)[0], b(idx)[0], atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = GPT(_preset('llama', n_kv_head=2)).eval()
    mha = GPT(_preset('llama', n_kv_head=None)).eval()
    sd = gqa.state_dict()
    hd, H, KV = 8, 4, 2
    for i in range(2):
        w = sd[f'blocks.{i}.attn.c_attn.weight']
        q, k, v = w.split([H * hd, KV * hd, KV * hd])
        rep = lambda t: t.view(KV, hd, -1).repeat_interleave(H // KV, dim=0).reshape(H * hd, -1)
        sd[f'blocks.{i}.attn.c_attn.weight'] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(sd)
    idx = torch.randint(0, 61, (2, 16))
    torch.testing.assert_close(gqa(idx)[0], mha(idx)[0], atol=1e-5, rtol=1e-5)
    # n_kv_head == n_head is exactly multi-head attention
    assert GPTConfig(n_kv_head=12).architecture_name() == GPTConfig().architecture_name()


@pytest.mark.parametrize('ffn_type', ['standard', 'swiglu', 'geglu'])
def test_moe_with_one_expert_top1_equals_dense(ffn_type):
    torch.manual_seed(0)
    dense = GPT(_preset('gpt2', ffn_type=ffn_type)).eval()
    moe = GPT(_preset('gpt2', ffn_type=ffn_type, n_expert=1, n_expert_per_token=1)).eval()
    sd = moe.state_dict()
    for key, value in dense.state_dict().items():
        if '.ffn.' not in key:
            sd[key] = value
    for i in range(2):
        f = f'blocks.{i}.ffn.'
        pairs = [('w_up', 'c_fc.weight'), ('b_up', 'c_fc.bias'), ('w_down', 'c_proj.weight'), ('b_down', 'c_proj.bias')]
        if ffn_type != 'standard':
            pairs += [('w_gate', 'c_gate.weight'), ('b_gate', 'c_gate.bias')]
        for moe_name, dense_name in pairs:
            sd[f + moe_name] = dense.state_dict()[f + dense_name].unsqueeze(0)
    moe.load_state_dict(sd)
    idx = torch.randint(0, 61, (2, 16))
    _, dense_loss = dense(idx, idx)
    _, moe_loss = moe(idx, idx)
    torch.testing.assert_close(moe.ce_loss, dense_loss)
    torch.testing.assert_close(moe(idx)[0], dense(idx)[0])
    assert moe.aux_loss.item() == pytest.approx(1.0)


def test_weight_tying_shares_storage():
    tied = GPT(_preset('gpt2'))
    assert tied.lm_head.weight.data_ptr() == tied.wte.weight.data_ptr()
    untied = GPT(_preset('llama'))
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()


@pytest.mark.parametrize('preset', ['gpt2', 'moe'])
def test_gradient_checkpointing_gives_same_gradients(preset):
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = GPT(_preset(preset, gradient_checkpointing=ckpt))
        idx = torch.randint(0, 61, (2, 16))
        model(idx, idx)[1].backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('preset', list(PRESETS))
def test_kv_cache_generation_matches_uncached(preset):
    torch.manual_seed(0)
    model = GPT(_preset(preset, n_kv_head=None if preset == 'gpt2' else 2)).eval()
    prompt = torch.randint(0, 61, (2, 5))
    # 30 new tokens run past block_size=16, so cropping is exercised too
    cached = model.generate(prompt, 30, temperature=0)
    uncached = model.generate(prompt, 30, temperature=0, use_cache=False)
    assert cached.shape == (2, 35)
    assert torch.equal(cached, uncached)
    # sampling with the same generator is reproducible, and top_k=1 is greedy
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = model.generate(prompt, 8, temperature=0.9, top_k=5, top_p=0.9, generator=g1)
    b = model.generate(prompt, 8, temperature=0.9, top_k=5, top_p=0.9, generator=g2)
    assert torch.equal(a, b)
    assert torch.equal(model.generate(prompt, 8, top_k=1), model.generate(prompt, 8, temperature=0))


def test_top_p_keeps_the_nucleus_only():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {M.sample_from_logits(logits, top_p=0.7, generator=g).item() for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.7; 2 and 3 are cut


# ---- counts ----

@pytest.mark.parametrize('preset', list(PRESETS))
def test_param_count_and_flops_match_measurement(preset):
    torch.manual_seed(0)
    cfg = _preset(preset, n_kv_head=None if preset == 'gpt2' else 2)
    model = GPT(cfg)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    idx = torch.randint(0, 61, (2, cfg.block_size))
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(idx, idx)[1].backward()
    measured = counter.get_total_flops() / idx.numel()
    assert abs(model.flops_per_token() - measured) / model.flops_per_token() < 0.01
    attn, ffn, head = model.flops_breakdown()
    assert attn > 0 and ffn > 0 and head > 0 and attn + ffn + head == model.flops_per_token()
    if cfg.n_expert:  # the grouped dispatch (GPU, compiled): counted too, its static padding rows apart
        for block in model.blocks:
            block.ffn.dispatch = block.ffn.dispatch_grouped
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            model(idx, idx)[1].backward()
        slots = idx.numel() * cfg.n_expert_per_token
        padding = (slots + M.MOE_ALIGN - 1) // M.MOE_ALIGN * M.MOE_ALIGN + cfg.n_expert * M.MOE_ALIGN - slots
        mats = 2 if cfg.ffn_type == 'standard' else 3
        grouped = counter.get_total_flops() - 3 * cfg.n_layer * mats * 2 * padding * cfg.n_embd * cfg.expert_hidden_size
        assert grouped / idx.numel() == pytest.approx(measured, rel=1e-9)


def test_full_size_counts_match_published_figures():
    # Hugging Face's gpt2 has 124,439,808 parameters; nanoGPT prints 123.69M non-embedding at vocab 50304
    assert count_params(GPTConfig.from_preset('gpt2', vocab_size=50257)) == 124_439_808
    assert count_params(GPTConfig.from_preset('gpt2'), non_embedding=True) == 123_689_472
    # TinyLlama-1.1B (22 layers, 2048 wide, 32 heads / 4 kv heads, SwiGLU 5632, vocab 32000): 1,100,048,384
    tinyllama = GPTConfig.from_preset('llama', n_layer=22, n_embd=2048, n_head=32, n_kv_head=4, vocab_size=32000,
                                      ffn_hidden=5632, block_size=2048)
    assert count_params(tinyllama) == 1_100_048_384


def _config_file_model(path):
    settings = runpy.run_path(path)
    fields = {f for f in GPTConfig.__dataclass_fields__}
    return GPTConfig.from_preset(settings['arch_preset'], **{k: v for k, v in settings.items() if k in fields})


@pytest.mark.parametrize('path,expected', [
    ('full_gpt2_124m.py', 124e6), ('full_llama_124m.py', 124e6), ('full_team_124m.py', 124e6),
    ('full_gpt2_1.36b.py', 1.36e9), ('full_llama_1.36b.py', 1.36e9)])
def test_config_sizes_match_their_names(path, expected):
    cfg = _config_file_model(os.path.join(ROOT, 'config', path))
    assert abs(count_params(cfg, non_embedding=True) - expected) / expected < 0.04


def test_moe_config_size():
    cfg = _config_file_model(os.path.join(ROOT, 'config', 'full_moe_200m.py'))
    assert abs(count_params(cfg) - 549e6) / 549e6 < 0.01
    assert cfg.kv_heads == 4 and cfg.n_expert == 8 and cfg.n_expert_per_token == 2
    active = count_params(GPTConfig.from_preset('moe', n_expert=2, n_expert_per_token=2))  # two experts' worth
    assert abs(active - 210e6) / 210e6 < 0.03


def test_custom_config_spells_out_every_switch():
    settings = runpy.run_path(os.path.join(ROOT, 'config', 'full_custom.py'))
    assert set(GPTConfig.__dataclass_fields__) <= set(settings)
    _config_file_model(os.path.join(ROOT, 'config', 'full_custom.py'))


# ---- names, presets, optimizer, errors ----

def test_architecture_name_is_distinct_per_switch():
    base = GPTConfig()
    name = base.architecture_name()
    assert name == '12L-12H-768D-AbsPos-LN-Bias-GELUTanh-PreNorm-Tied'
    changes = [dict(normalization='layernorm_nobias'), dict(normalization='rmsnorm'), dict(activation='gelu'),
               dict(activation='relu2'), dict(position_encoding='rope'), dict(position_encoding='none'),
               dict(norm_position='post'), dict(ffn_type='swiglu'), dict(ffn_type='geglu'), dict(ffn_hidden=1000),
               dict(bias=False), dict(weight_tying=False), dict(n_kv_head=4), dict(qk_norm=True), dict(n_expert=8),
               dict(n_expert=8, n_expert_per_token=1), dict(n_expert=8, moe_intermediate_size=512),
               dict(dropout=0.1), dict(n_layer=6), dict(n_embd=384), dict(n_head=6), dict(norm_eps=1e-6),
               dict(position_encoding='rope', rope_theta=500000.0)]
    names = {name} | {GPTConfig(**c).architecture_name() for c in changes}
    assert len(names) == len(changes) + 1


def test_presets_and_overrides():
    g = GPTConfig.from_preset('gpt2')
    assert (g.position_encoding, g.normalization, g.norm_position, g.weight_tying) == \
           ('learned_absolute', 'layernorm', 'pre', True)
    llama = GPTConfig.from_preset('llama', n_kv_head=4)
    assert (llama.position_encoding, llama.normalization, llama.ffn_type, llama.bias, llama.weight_tying,
            llama.kv_heads) == ('rope', 'rmsnorm', 'swiglu', False, False, 4)
    assert GPTConfig.from_preset('team') == GPTConfig.from_preset('llama')
    h = GPTConfig.from_preset('hybrid')
    assert (h.normalization, h.position_encoding, h.ffn_type, h.weight_tying) == ('layernorm', 'rope', 'standard', True)
    moe = GPTConfig.from_preset('moe')
    assert (moe.n_expert, moe.n_expert_per_token, moe.ffn_type) == (8, 2, 'swiglu')
    assert GPTConfig.from_preset('gpt2', position_encoding='rope').position_encoding == 'rope'
    assert GPTConfig.from_preset('llama').ffn_hidden_size == 2048  # 8/3 * 768 rounded up to 256
    with pytest.raises(ValueError, match="did you mean 'n_layer'"):
        GPTConfig.from_preset('gpt2', n_layers=3)
    with pytest.raises(ValueError, match='arch_preset'):
        GPTConfig.from_preset('gpt3')


def _is_bias(name):
    return name.endswith('bias') or name.rsplit('.', 1)[-1] in ('b_up', 'b_gate', 'b_down')


def test_configure_optimizers_decays_only_matrices():
    model = GPT(_preset('moe', bias=True))
    names = {id(p): n for n, p in model.named_parameters()}
    [opt] = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert all(p.dim() >= 2 and not _is_bias(names[id(p)]) for p in decay['params'])
    # the experts' biases are 2-D (experts x width) and still biases: no decay
    assert {'blocks.0.ffn.b_up', 'blocks.0.ffn.b_gate', 'blocks.0.ffn.b_down'} <= {names[id(p)] for p in no_decay['params']}
    assert all(p.dim() < 2 or _is_bias(names[id(p)]) for p in no_decay['params'])
    assert len(decay['params']) + len(no_decay['params']) == len(list(model.parameters()))


@pytest.mark.parametrize('preset,kw', [('llama', {}), ('moe', {'bias': True}), ('gpt2', {})])
def test_muon_takes_the_block_matrices(preset, kw):
    model = GPT(_preset(preset, **kw))
    adamw, muon = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu', optimizer='muon')
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for p in muon.param_groups[0]['params']}
    assert muon_names == {n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith('blocks.')
                          and '.router.' not in n and not _is_bias(n)}
    adamw_names = {names[id(p)] for g in adamw.param_groups for p in g['params']}
    assert {'wte.weight', 'lm_head.weight' if preset != 'gpt2' else 'wpe.weight'} <= adamw_names
    assert not adamw_names & muon_names and len(adamw_names | muon_names) == len(names)
    no_decay = {names[id(p)] for p in adamw.param_groups[1]['params']}
    assert {n for n in names.values() if _is_bias(n)} <= no_decay  # biases: AdamW, no decay
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu', optimizer='sgd')


def test_expert_fractions_sum_to_one():
    model = GPT(_preset('moe'))
    model(torch.randint(0, 61, (2, 16)), torch.randint(0, 61, (2, 16)))
    fractions = model.expert_fractions()
    assert len(fractions) == 2
    for f in fractions:
        assert f.shape == (8,) and f.sum().item() == pytest.approx(1.0)
    assert model.aux_loss.item() >= 0.99  # E * sum f*P is at least ~1, equal to 1 when balanced


@pytest.mark.parametrize('kw,match', [
    (dict(n_embd=30, n_head=4), 'n_embd=30'),
    (dict(n_head=4, n_kv_head=3), 'n_kv_head=3'),
    (dict(normalization='batchnorm'), "normalization='batchnorm'.*rmsnorm"),
    (dict(activation='tanh'), "activation='tanh'.*relu2"),
    (dict(position_encoding='alibi'), "position_encoding='alibi'"),
    (dict(norm_position='sandwich'), "norm_position='sandwich'"),
    (dict(ffn_type='moe'), "ffn_type='moe'"),
    (dict(attention_backend='flash'), "attention_backend='flash'"),
    (dict(n_expert=2, n_expert_per_token=3), 'n_expert_per_token=3'),
    (dict(n_expert=2, n_embd=36, n_head=4), 'n_embd=36.*multiple of 8'),
    (dict(n_expert=2, moe_intermediate_size=100), 'moe_intermediate_size=100.*multiple of 8'),
    (dict(n_embd=36, n_head=12, position_encoding='rope'), 'even for rope'),
    (dict(dropout=1.5), 'dropout=1.5'),
    (dict(n_layer=0), 'n_layer=0'),
])
def test_invalid_configs_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kw)


def test_moe_router_runs_in_fp32_under_bf16_autocast(monkeypatch):
    # a bf16 router rounds the logits and routes some tokens to other experts (bench/moe_router_precision.py)
    torch.manual_seed(0)
    config = _preset('moe')
    moe = GPT(config).blocks[0].ffn
    x = torch.randn(2, 8, config.n_embd)
    seen, softmax = [], F.softmax
    monkeypatch.setattr(F, 'softmax', lambda logits, dim: seen.append(logits) or softmax(logits, dim=dim))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        moe(x)
    assert seen[0].dtype == torch.float32
    assert torch.equal(seen[0], F.linear(x.reshape(-1, config.n_embd), moe.router.weight))

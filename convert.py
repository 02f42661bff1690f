"""
Hugging Face interop: export a modgpt checkpoint as a transformers model folder, or import one.

    python convert.py export out-shakespeare/ckpt_2000.pt hf-model/     # or an out_dir: its newest checkpoint
    python convert.py export out/ hf-model/ data/moved/                 # DATA_DIR: where the tokenizer's files are
    python convert.py import hf-model/ out-imported/                    # writes out-imported/ckpt_0.pt

gpt2 preset <-> GPT2LMHeadModel, llama-family presets <-> LlamaForCausalLM, moe preset <-> MixtralForCausalLM.
The export also writes the tokenizer the model was trained with (GPT-2 BPE, SentencePiece, a Hugging Face folder,
a character vocabulary) as transformers tokenizer files, and makes its end-of-text token the model's BOS and EOS.
A config no transformers class can represent is refused with the switch that blocks it. Needs
`pip install transformers safetensors`. The weights are checked against transformers in tests/test_convert.py.
"""
import glob
import json
import os
import shutil
import sys

import torch
from dataclasses import asdict, replace

import checkpoint as ckpt_files
from errors import die
from model import GPT, GPTConfig
from tokenizer import Tokenizer

GPT2_ACTIVATIONS = {'gelu_tanh': 'gelu_new', 'gelu': 'gelu', 'relu': 'relu', 'silu': 'silu'}
GPT2_HUB_NAMES = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')  # nanoGPT's init_from names
# (modgpt name, transformers name) inside a block, used in both directions
GPT2_NORMS = (('norm_1', 'ln_1'), ('norm_2', 'ln_2'))
GPT2_LINEARS = (('attn.c_attn', 'attn.c_attn'), ('attn.c_proj', 'attn.c_proj'), ('ffn.c_fc', 'mlp.c_fc'),
                ('ffn.c_proj', 'mlp.c_proj'))
LLAMA_MLP = (('c_gate', 'gate_proj'), ('c_fc', 'up_proj'), ('c_proj', 'down_proj'))
MIXTRAL_EXPERTS = (('w_gate', 'w1'), ('w_up', 'w3'), ('w_down', 'w2'))


class ConversionError(Exception):
    pass


def require(module):
    try:
        return __import__(module)
    except ImportError:
        raise ConversionError(f"{module} is needed for Hugging Face conversion: pip install transformers safetensors")


def hf_family(c):
    """'gpt2', 'llama' or 'mixtral' for a GPTConfig, or ConversionError naming the switch no HF class supports."""
    def refuse(field, why):
        raise ConversionError(f"cannot export {field}={getattr(c, field)!r}: {why}")
    if c.norm_position != 'pre':
        refuse('norm_position', 'GPT-2, Llama and Mixtral are pre-norm')
    if c.qk_norm:
        refuse('qk_norm', 'GPT-2, Llama and Mixtral have no query/key norm')
    if c.position_encoding == 'learned_absolute':
        if c.ffn_type != 'standard':
            refuse('ffn_type', "learned positions export as GPT-2, whose FFN is 'standard'")
        if c.normalization != 'layernorm':
            refuse('normalization', "learned positions export as GPT-2, which uses 'layernorm'")
        if not c.bias:
            refuse('bias', 'GPT-2 has biases in every Linear')
        if not c.weight_tying:
            refuse('weight_tying', 'GPT-2 ties its head to the token embedding')
        if c.kv_heads != c.n_head:
            refuse('n_kv_head', 'GPT-2 has no grouped-query attention')
        if c.activation not in GPT2_ACTIVATIONS:
            refuse('activation', f"GPT-2 supports {', '.join(GPT2_ACTIVATIONS)}")
        if c.n_expert:
            refuse('n_expert', 'GPT-2 has no experts')
        return 'gpt2'
    if c.position_encoding != 'rope':
        refuse('position_encoding', "only 'learned_absolute' (GPT-2) and 'rope' (Llama, Mixtral) export")
    if c.normalization != 'rmsnorm':
        refuse('normalization', "RoPE models export as Llama/Mixtral, which use 'rmsnorm'")
    if c.ffn_type != 'swiglu':
        refuse('ffn_type', "RoPE models export as Llama/Mixtral, whose FFN is 'swiglu'")
    if c.n_expert and c.bias:
        refuse('bias', 'Mixtral has no biases')
    return 'mixtral' if c.n_expert else 'llama'


def to_hf(config, state, eot=None, bos=None):
    """(transformers config, HF-named state dict) of a modgpt model. eot: the end-of-text id of its tokenizer, which
    generate() stops at; bos: its beginning-of-text id (default eot: documents start after one); None: none."""
    bos = eot if bos is None else bos
    transformers = require('transformers')
    c, family = config, hf_family(config)
    hd, H, KV = c.head_dim, c.n_head, c.kv_heads
    out = {}
    if family == 'gpt2':
        hf = transformers.GPT2Config(vocab_size=c.vocab_size, bos_token_id=bos, eos_token_id=eot, n_positions=c.block_size, n_embd=c.n_embd,
                                     n_layer=c.n_layer, n_head=c.n_head, n_inner=c.ffn_hidden_size,
                                     activation_function=GPT2_ACTIVATIONS[c.activation], resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=c.norm_eps,
                                     tie_word_embeddings=True, architectures=['GPT2LMHeadModel'])
        out['transformer.wte.weight'] = state['wte.weight']
        out['transformer.wpe.weight'] = state['wpe.weight']
        for i in range(c.n_layer):
            src, dst = f'blocks.{i}.', f'transformer.h.{i}.'
            for a, b in GPT2_NORMS:
                out[f'{dst}{b}.weight'], out[f'{dst}{b}.bias'] = state[f'{src}{a}.weight'], state[f'{src}{a}.bias']
            # GPT-2's Conv1D stores weights as (in, out): the transpose of nn.Linear
            for a, b in GPT2_LINEARS:
                out[f'{dst}{b}.weight'] = state[f'{src}{a}.weight'].t().contiguous()
                out[f'{dst}{b}.bias'] = state[f'{src}{a}.bias']
        out['transformer.ln_f.weight'], out['transformer.ln_f.bias'] = state['norm_f.weight'], state['norm_f.bias']
        return hf, out
    common = dict(vocab_size=c.vocab_size, hidden_size=c.n_embd, num_hidden_layers=c.n_layer, num_attention_heads=H,
                  num_key_value_heads=KV, max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps,
                  hidden_act='silu', tie_word_embeddings=c.weight_tying, attention_dropout=0.0, head_dim=hd,
                  rope_theta=c.rope_theta, bos_token_id=bos, eos_token_id=eot)
    if family == 'llama':
        hf = transformers.LlamaConfig(intermediate_size=c.ffn_hidden_size, attention_bias=c.bias, mlp_bias=c.bias,
                                      architectures=['LlamaForCausalLM'], **common)
    else:
        hf = transformers.MixtralConfig(intermediate_size=c.expert_hidden_size, num_local_experts=c.n_expert,
                                        num_experts_per_tok=c.n_expert_per_token, architectures=['MixtralForCausalLM'],
                                        router_aux_loss_coef=c.moe_aux_loss_coef, **common)
    if getattr(hf, 'rope_parameters', None) is not None:  # newer transformers keep rope_theta here
        hf.rope_parameters = {**hf.rope_parameters, 'rope_theta': c.rope_theta}
    out['model.embed_tokens.weight'] = state['wte.weight']
    for i in range(c.n_layer):
        src, dst = f'blocks.{i}.', f'model.layers.{i}.'
        for kind in ('weight', 'bias') if c.bias else ('weight',):
            q, k, v = state[f'{src}attn.c_attn.{kind}'].split([H * hd, KV * hd, KV * hd])
            out[f'{dst}self_attn.q_proj.{kind}'], out[f'{dst}self_attn.k_proj.{kind}'] = q, k
            out[f'{dst}self_attn.v_proj.{kind}'] = v
            out[f'{dst}self_attn.o_proj.{kind}'] = state[f'{src}attn.c_proj.{kind}']
            if family == 'llama':
                for a, b in LLAMA_MLP:
                    out[f'{dst}mlp.{b}.{kind}'] = state[f'{src}ffn.{a}.{kind}']
        out[f'{dst}input_layernorm.weight'] = state[f'{src}norm_1.weight']
        out[f'{dst}post_attention_layernorm.weight'] = state[f'{src}norm_2.weight']
        if family == 'mixtral':  # the on-disk layout: one w1 (gate), w3 (up), w2 (down) per expert
            moe = f'{dst}block_sparse_moe.'
            out[f'{moe}gate.weight'] = state[f'{src}ffn.router.weight']
            for ours, theirs in MIXTRAL_EXPERTS:
                for e in range(c.n_expert):
                    out[f'{moe}experts.{e}.{theirs}.weight'] = state[f'{src}ffn.{ours}'][e]
    out['model.norm.weight'] = state['norm_f.weight']
    if not c.weight_tying:
        out['lm_head.weight'] = state['lm_head.weight']
    return hf, out


def canonical(config):
    """The config with sizes that equal their defaults written as None, as a config file would leave them."""
    if replace(config, ffn_hidden=None).ffn_hidden_size == config.ffn_hidden_size:
        config = replace(config, ffn_hidden=None)
    if config.moe_intermediate_size == config.ffn_hidden_size:
        config = replace(config, moe_intermediate_size=None)
    return config


def from_hf(hf, tensors):
    """(GPTConfig, modgpt state dict) from a transformers config dict and HF-named tensors."""
    def refuse(field, why):
        raise ConversionError(f"cannot import {field}={hf[field]!r}: {why}")
    kind = hf.get('model_type')
    if kind == 'gpt2':
        # reorder_and_upcast_attn only computes the same scores in float32, so it imports as is
        if not hf.get('scale_attn_weights', True):
            refuse('scale_attn_weights', 'modgpt divides attention scores by sqrt(head_dim); allowed: True')
        if hf.get('scale_attn_by_inverse_layer_idx', False):
            refuse('scale_attn_by_inverse_layer_idx', 'modgpt does not scale scores by layer; allowed: False')
        if not hf.get('tie_word_embeddings', True):
            refuse('tie_word_embeddings', "modgpt's GPT-2 head is the token embedding; allowed: True")
        act = {v: k for k, v in GPT2_ACTIVATIONS.items()}.get(hf.get('activation_function', 'gelu_new'))
        if act is None:
            raise ConversionError(f"GPT-2 activation_function={hf.get('activation_function')!r} is not supported")
        c = GPTConfig.from_preset('gpt2', vocab_size=hf['vocab_size'], block_size=hf['n_positions'],
                                  n_layer=hf['n_layer'], n_head=hf['n_head'], n_embd=hf['n_embd'],
                                  ffn_hidden=hf.get('n_inner') or 4 * hf['n_embd'], activation=act,
                                  norm_eps=hf.get('layer_norm_epsilon', 1e-5))
        c = canonical(c)
        t = {k.removeprefix('transformer.'): v for k, v in tensors.items()}
        state = {'wte.weight': t['wte.weight'], 'wpe.weight': t['wpe.weight'],
                 'norm_f.weight': t['ln_f.weight'], 'norm_f.bias': t['ln_f.bias'], 'lm_head.weight': t['wte.weight']}
        for i in range(c.n_layer):
            src, dst = f'h.{i}.', f'blocks.{i}.'
            for ours, theirs in GPT2_NORMS:
                for kind in ('weight', 'bias'):
                    state[f'{dst}{ours}.{kind}'] = t[f'{src}{theirs}.{kind}']
            for ours, theirs in GPT2_LINEARS:
                state[f'{dst}{ours}.weight'] = t[f'{src}{theirs}.weight'].t().contiguous()
                state[f'{dst}{ours}.bias'] = t[f'{src}{theirs}.bias']
        return c, state
    if kind not in ('llama', 'mixtral'):
        raise ConversionError(f"model_type {kind!r} is not supported; allowed: gpt2, llama, mixtral")
    if hf.get('hidden_act', 'silu') != 'silu':
        raise ConversionError(f"hidden_act={hf['hidden_act']!r} is not supported (SwiGLU needs silu)")
    if (hf.get('rope_scaling') or {}).get('rope_type', 'default') != 'default' or \
            (hf.get('rope_parameters') or {}).get('rope_type', 'default') != 'default':
        raise ConversionError("RoPE scaling (e.g. Llama 3's) is not supported")
    theta = hf.get('rope_theta') or (hf.get('rope_parameters') or {}).get('rope_theta', 10000.0)
    H, D = hf['num_attention_heads'], hf['hidden_size']
    if hf.get('head_dim') not in (None, D // H):
        raise ConversionError(f"head_dim={hf['head_dim']} differs from hidden_size/num_attention_heads")
    window = hf.get('sliding_window') if kind == 'mixtral' else None  # LlamaModel ignores the field
    if window is not None and window < hf['max_position_embeddings']:
        refuse('sliding_window', f"modgpt attends to the whole context of {hf['max_position_embeddings']} "
                                 f"positions; allowed: None or at least that")
    bias = bool(hf.get('attention_bias', False))
    if kind == 'llama' and bias != bool(hf.get('mlp_bias', False)):
        raise ConversionError("attention_bias and mlp_bias differ; modgpt has one bias switch")
    moe = dict(n_expert=hf['num_local_experts'], n_expert_per_token=hf['num_experts_per_tok'],
               moe_intermediate_size=hf['intermediate_size'],
               moe_aux_loss_coef=hf.get('router_aux_loss_coef', 0.01)) if kind == 'mixtral' else dict(n_expert=0)
    c = GPTConfig.from_preset('llama', vocab_size=hf['vocab_size'], block_size=hf['max_position_embeddings'],
                              n_layer=hf['num_hidden_layers'], n_head=H, n_kv_head=hf.get('num_key_value_heads') or H,
                              n_embd=D, ffn_hidden=hf['intermediate_size'], rope_theta=float(theta),
                              norm_eps=hf.get('rms_norm_eps', 1e-6), bias=bias,
                              weight_tying=bool(hf.get('tie_word_embeddings', False)), **moe)
    c = canonical(c)
    t = tensors
    state = {'wte.weight': t['model.embed_tokens.weight'], 'norm_f.weight': t['model.norm.weight'],
             'lm_head.weight': t['model.embed_tokens.weight'] if c.weight_tying else t['lm_head.weight']}
    for i in range(c.n_layer):
        src, dst = f'model.layers.{i}.', f'blocks.{i}.'
        for part in ('weight', 'bias') if bias else ('weight',):
            state[f'{dst}attn.c_attn.{part}'] = torch.cat([t[f'{src}self_attn.{p}_proj.{part}'] for p in 'qkv'])
            state[f'{dst}attn.c_proj.{part}'] = t[f'{src}self_attn.o_proj.{part}']
            if kind == 'llama':
                for a, b in LLAMA_MLP:
                    state[f'{dst}ffn.{a}.{part}'] = t[f'{src}mlp.{b}.{part}']
        state[f'{dst}norm_1.weight'] = t[f'{src}input_layernorm.weight']
        state[f'{dst}norm_2.weight'] = t[f'{src}post_attention_layernorm.weight']
        if kind == 'mixtral':
            moe_src = f'{src}block_sparse_moe.'
            state[f'{dst}ffn.router.weight'] = t[f'{moe_src}gate.weight']
            for ours, theirs in MIXTRAL_EXPERTS:
                state[f'{dst}ffn.{ours}'] = torch.stack([t[f'{moe_src}experts.{e}.{theirs}.weight']
                                                         for e in range(c.n_expert)])
    return c, state


def read_hf_dir(hf_dir):
    """(config dict, tensors) from a Hugging Face model folder: safetensors (sharded too) or pytorch_model.bin."""
    path = os.path.join(hf_dir, 'config.json')
    if not os.path.isfile(path):
        raise ConversionError(f"{hf_dir} has no config.json: not a Hugging Face model folder")
    with open(path) as f:
        hf = json.load(f)
    files = sorted(glob.glob(os.path.join(hf_dir, '*.safetensors')))
    tensors = {}
    if files:
        require('safetensors')
        from safetensors.torch import load_file
        for name in files:
            tensors.update(load_file(name))
    elif os.path.isfile(os.path.join(hf_dir, 'pytorch_model.bin')):
        tensors = torch.load(os.path.join(hf_dir, 'pytorch_model.bin'), map_location='cpu', weights_only=True)
    else:
        raise ConversionError(f"{hf_dir} holds no model.safetensors or pytorch_model.bin")
    return hf, {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def resolve_hf(name):
    """A local folder for init_from: 'hf:<dir>', or one of GPT2_HUB_NAMES downloaded from the Hugging Face hub."""
    if name.startswith('hf:'):
        if not os.path.isdir(name[3:]):
            raise ConversionError(f"init_from={name!r}: no folder {name[3:]}")
        return name[3:]
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConversionError(f"init_from={name!r} downloads from the Hugging Face hub: pip install huggingface_hub")
    try:
        return snapshot_download(f'openai-community/{name}', allow_patterns=[
            'config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'vocab.json', 'merges.txt'])
    except Exception as e:
        raise ConversionError(f"could not fetch {name} from the Hugging Face hub ({type(e).__name__}); offline, "
                              f"download it elsewhere and use init_from='hf:<dir>'")


def load_hf(hf_dir):
    """A GPT with the weights of a Hugging Face model folder, and the tokenizer spec that goes with it."""
    hf, tensors = read_hf_dir(hf_dir)
    config, state = from_hf(hf, tensors)
    model = GPT(config)
    model.load_state_dict(state)
    return model, hf_tokenizer_spec(hf_dir, config)


def load_for_training(init_from, **settings):
    """(GPTConfig, state_dict) to start train.py from a Hugging Face model (init_from = hf:<dir> or a GPT2_HUB_NAMES
    name). The weights fix the architecture: settings may only be the ones that leave the function unchanged
    (dropout, attention_backend, gradient_checkpointing), or change only training (attention_mask: a document
    mask, as Hugging Face models are causal over their input); a None setting keeps the model's."""
    model, _ = load_hf(resolve_hf(init_from))
    return replace(model.config, **{k: v for k, v in settings.items() if v is not None}), model.state_dict()


def hf_tokenizer_spec(hf_dir, config):
    """How tokenizer.py should rebuild this model's tokenizer: the folder's own files when it has any."""
    names = set(os.listdir(hf_dir))
    if names & {'tokenizer.json', 'tokenizer_config.json', 'vocab.json', 'tokenizer.model'}:
        return {'type': 'huggingface', 'path': os.path.abspath(hf_dir)}
    if config.vocab_size in (50257, 50304):
        return {'type': 'tiktoken', 'name': 'gpt2'}
    return None


def save_gpt2_tokenizer(hf_dir):
    """GPT-2 BPE tokenizer files, from tiktoken's (cached) copies of OpenAI's encoder.json and vocab.bpe."""
    transformers = require('transformers')
    from tiktoken.load import read_file_cached
    base = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/'
    for name, url_name in (('vocab.json', 'encoder.json'), ('merges.txt', 'vocab.bpe')):
        with open(os.path.join(hf_dir, name), 'wb') as f:
            f.write(read_file_cached(base + url_name))
    # from_pretrained reads vocab.json + merges.txt under any transformers version; saving adds tokenizer.json
    transformers.GPT2TokenizerFast.from_pretrained(hf_dir).save_pretrained(hf_dir)


def sentencepiece_tokenizer(path):
    """A tokenizers object that encodes like SentencePieceProcessor.encode with the model file at path: the same
    normalizer settings, BPE merges ranked by piece score (or the unigram scores), byte fallback; or a string saying
    why there is none."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        return "reading a SentencePiece model file needs protobuf: pip install protobuf"
    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, 'rb') as f:
        proto.ParseFromString(f.read())
    trainer, spec = proto.trainer_spec, proto.normalizer_spec
    if any(p.type == 4 for p in proto.pieces):  # SentencePiece matches these whole, before any merge
        return f"{path} has user-defined pieces, which a tokenizers model cannot match the same way"
    if trainer.model_type == 1:
        tok = Tokenizer(models.Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=trainer.unk_id,
                                       byte_fallback=trainer.byte_fallback))
    elif trainer.model_type == 2:  # a merge per split of a normal piece into two normal ones, best piece first
        normal = {p.piece: (-p.score, i) for i, p in enumerate(proto.pieces) if p.type == 1}
        merges = sorted((normal[p], p[:k], p[k:]) for p in normal for k in range(1, len(p))
                        if p[:k] in normal and p[k:] in normal)
        tok = Tokenizer(models.BPE({p.piece: i for i, p in enumerate(proto.pieces)}, [m[1:] for m in merges],
                                   unk_token=trainer.unk_piece, fuse_unk=True, byte_fallback=trainer.byte_fallback))
    else:
        return f"{path} is a SentencePiece model of type {trainer.model_type}; allowed: 1 (unigram), 2 (bpe)"
    space = '\u2581' if spec.escape_whitespaces else ' '
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r'\A +| +\z'), ''), normalizers.Replace(Regex(' {2,}'), ' ')]
    steps += [normalizers.Replace(' ', space)] + ([normalizers.Prepend(space)] if spec.add_dummy_prefix else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace(space, ' '), decoders.ByteFallback(), decoders.Fuse()] +
                                    ([decoders.Strip(' ', 1, 0)] if spec.add_dummy_prefix else []))
    return tok


def char_tokenizer(chars, eot):
    """A tokenizers object for a character vocabulary: every character a token, the end-of-text one after them."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    vocab = {ch: i for i, ch in enumerate(chars)} | ({'<|endoftext|>': eot} if eot is not None else {})
    tok = Tokenizer(models.WordLevel(vocab, unk_token='<|unknown|>'))  # not in vocab: encoding an unknown fails
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r'[\s\S]'), 'isolated')
    tok.decoder = decoders.Fuse()
    return tok


def save_tokenizer(tokenizer, folder, hf_dir):
    """The transformers tokenizer files of a tokenizer.py Tokenizer whose files are in folder, encoding the same ids
    and adding none; returns None, or a line saying why none was written."""
    transformers = require('transformers')
    if tokenizer.kind == 'huggingface':
        tokenizer.hf.save_pretrained(hf_dir)
        return None
    if tokenizer.kind == 'tiktoken':
        if tokenizer.spec['name'] != 'gpt2':
            return f"tiktoken {tokenizer.spec['name']!r} has no transformers tokenizer here; allowed: gpt2"
        save_gpt2_tokenizer(hf_dir)
        return None
    if tokenizer.kind == 'sentencepiece':
        tok = sentencepiece_tokenizer(os.path.join(folder, tokenizer.spec['model']))
        if isinstance(tok, str):
            return tok
        piece = tokenizer.sp.id_to_piece
        eot, unk = piece(tokenizer.eot) if tokenizer.eot is not None else None, piece(tokenizer.sp.unk_id())
    else:
        tok, unk = char_tokenizer(tokenizer.chars, tokenizer.eot), None
        eot = '<|endoftext|>' if tokenizer.eot is not None else None
    # the end-of-text token is BOS too, as in the model config (to_hf)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=unk,
                                         clean_up_tokenization_spaces=False).save_pretrained(hf_dir)
    return None


def export(source, hf_dir, data_dir=''):
    if os.path.isdir(source):
        paths = ckpt_files.list_checkpoints(source)
        if not paths:
            raise ConversionError(f"no ckpt_<iter>.pt in {source}")
        source = paths[0]
    if not os.path.isfile(source):
        raise ConversionError(f"checkpoint {source} not found")
    ckpt = ckpt_files.load(source)
    config = GPTConfig(**ckpt['model_args'])
    spec = (ckpt.get('meta') or {}).get('tokenizer')
    tokenizer, folder = None, ckpt_files.dataset_dir(ckpt, data_dir)
    if spec:  # the tokenizer it was trained with gives the end-of-text id and the tokenizer files
        try:
            tokenizer = Tokenizer(spec, folder)
        except (FileNotFoundError, ImportError, ValueError, OSError) as e:
            raise ConversionError(f"cannot rebuild the tokenizer of {source} ({e}); give the folder of its files "
                                  f"as DATA_DIR")
    # a Hugging Face tokenizer keeps its own BOS (an imported Llama's <s>); the project's own ones have only EOT
    bos = tokenizer.hf.bos_token_id if tokenizer is not None and tokenizer.kind == 'huggingface' else None
    hf, tensors = to_hf(config, ckpt['model'], tokenizer.eot if tokenizer else None, bos)
    require('safetensors')
    from safetensors.torch import save_file
    os.makedirs(hf_dir, exist_ok=True)
    hf.save_pretrained(hf_dir)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(hf_dir, 'model.safetensors'),
              metadata={'format': 'pt'})
    missing = save_tokenizer(tokenizer, folder, hf_dir) if tokenizer else "the checkpoint records no tokenizer"
    return source, missing


def import_(hf_dir, out_dir):
    model, spec = load_hf(hf_dir)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, 'ckpt_0.pt')
    if os.path.exists(path):
        raise ConversionError(f"{path} exists; choose another out_dir")
    meta = {'tokenizer': spec, 'vocab_size': model.config.vocab_size} if spec else None
    ckpt_files.save({'model': model.state_dict(), 'model_args': asdict(model.config), 'optimizer': None,
                     'iter_num': 0, 'best_val_loss': float('inf'), 'tokens_seen': 0, 'seed': 1337, 'world_size': 1,
                     'config': {'init_from': f'hf:{hf_dir}', 'data_dir': os.path.abspath(out_dir)}, 'meta': meta},
                    path)
    for name in ('tokenizer.model',):  # a SentencePiece tokenizer travels with the checkpoint
        if os.path.isfile(os.path.join(hf_dir, name)):
            shutil.copyfile(os.path.join(hf_dir, name), os.path.join(out_dir, name))
    return path


def main(argv):
    usage = ("usage: python convert.py export CKPT_OR_OUT_DIR HF_DIR [DATA_DIR] | "
             "python convert.py import HF_DIR OUT_DIR")
    if not (argv[:1] == ['export'] and len(argv) in (3, 4) or argv[:1] == ['import'] and len(argv) == 3):
        print(usage, file=sys.stderr)
        return 2
    try:
        if argv[0] == 'export':
            source, missing = export(*argv[1:])
            print(f"exported {source} to {argv[2]}" + (f" without a tokenizer: {missing}" if missing else ''))
        else:
            print(f"imported {argv[1]} to {import_(argv[1], argv[2])}")
    except (ConversionError, ValueError, KeyError) as e:
        die(f"missing tensor {e}" if isinstance(e, KeyError) else str(e))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

"""Export to and import from Hugging Face transformers, checked numerically against transformers itself."""
import os
from dataclasses import asdict

import pytest
import torch

import checkpoint as ckpt_files
import convert
from helpers import SHARED, make_char_dataset, run, run_logs, train
from model import GPT, GPTConfig
from tokenizer import Tokenizer

transformers = pytest.importorskip('transformers', reason='transformers is not installed (pip install transformers)')
pytest.importorskip('safetensors', reason='safetensors is not installed')

TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=64)
CASES = {'gpt2': {}, 'llama': dict(n_kv_head=2), 'moe': dict(n_kv_head=2, n_expert=4, n_expert_per_token=2)}


def modgpt(preset, **kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(preset, **{**TINY, **CASES[preset], **kw})).eval()
    with torch.no_grad():  # larger weights than the init, so that routing and logits are far from uniform
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model


def save_checkpoint(model, directory, meta=None, config=None):
    os.makedirs(directory, exist_ok=True)
    ckpt_files.save({'model': model.state_dict(), 'model_args': asdict(model.config), 'meta': meta,
                     'config': config}, os.path.join(directory, 'ckpt_1.pt'))
    return directory


def greedy_hf(hf, idx, steps):
    for _ in range(steps):  # plain greedy decoding on the transformers model, no EOS handling
        with torch.no_grad():
            idx = torch.cat([idx, hf(idx).logits[:, -1:].argmax(-1)], dim=1)
    return idx


def assert_same_model(ours, hf):
    torch.manual_seed(1)
    idx = torch.randint(0, TINY['vocab_size'], (2, TINY['block_size']))
    with torch.no_grad():
        diff = (ours(idx)[0] - hf(idx).logits).abs().max().item()
    assert diff <= 1e-4, diff
    prompt = idx[:, :5]
    assert torch.equal(ours.generate(prompt, 20, temperature=0), greedy_hf(hf, prompt, 20))


@pytest.mark.parametrize('preset', list(CASES))
def test_export_loads_in_transformers_with_the_same_outputs(preset, tmp_path):
    ours = modgpt(preset)
    convert.export(save_checkpoint(ours, tmp_path / 'ckpt'), str(tmp_path / 'hf'))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'hf').eval()
    assert type(hf).__name__ == {'gpt2': 'GPT2LMHeadModel', 'llama': 'LlamaForCausalLM',
                                 'moe': 'MixtralForCausalLM'}[preset]
    assert_same_model(ours, hf)


@pytest.mark.parametrize('preset', list(CASES))
def test_export_then_import_is_bit_exact(preset, tmp_path):
    ours = modgpt(preset)
    convert.export(save_checkpoint(ours, tmp_path / 'ckpt'), str(tmp_path / 'hf'))
    path = convert.import_(str(tmp_path / 'hf'), str(tmp_path / 'back'))
    back = ckpt_files.load(path)
    assert back['model_args'] == asdict(ours.config)
    original = ours.state_dict()
    assert set(back['model']) == set(original)
    assert all(torch.equal(back['model'][k], original[k]) for k in original)


def hf_model(kind):
    torch.manual_seed(0)
    if kind == 'gpt2':
        cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                      initializer_range=0.2)
        return transformers.GPT2LMHeadModel(cfg)
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=32, initializer_range=0.2, rope_theta=500000.0)
    if kind == 'llama':
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    return transformers.MixtralForCausalLM(transformers.MixtralConfig(num_local_experts=4, num_experts_per_tok=2,
                                                                      **common))


@pytest.mark.parametrize('kind', ['gpt2', 'llama', 'mixtral'])
def test_import_from_transformers(kind, tmp_path):
    hf = hf_model(kind).eval()
    hf.save_pretrained(tmp_path / 'hf')
    r = run('convert.py', 'import', tmp_path / 'hf', tmp_path / 'out')
    assert r.returncode == 0, r.stderr
    ckpt = ckpt_files.load(tmp_path / 'out' / 'ckpt_0.pt')
    ours = GPT(GPTConfig(**ckpt['model_args'])).eval()
    ours.load_state_dict(ckpt['model'])
    if kind != 'gpt2':
        assert ours.config.rope_theta == 500000.0 and ours.config.kv_heads == 2
    assert_same_model(ours, hf)


@pytest.mark.parametrize('change,field', [
    (dict(norm_position='post'), 'norm_position'),
    (dict(ffn_type='swiglu'), 'ffn_type'),  # learned positions with SwiGLU
    (dict(qk_norm=True), 'qk_norm'),
    (dict(position_encoding='none'), 'position_encoding'),
    (dict(bias=False), 'bias'),
    (dict(position_encoding='rope'), 'normalization'),  # RoPE with LayerNorm: no HF class
])
def test_unrepresentable_configs_are_refused(change, field, tmp_path):
    model = GPT(GPTConfig.from_preset('gpt2', **TINY, **change))
    save_checkpoint(model, tmp_path / 'ckpt')
    r = run('convert.py', 'export', tmp_path / 'ckpt', tmp_path / 'hf')
    assert r.returncode == 2 and r.stderr.startswith(f'error: cannot export {field}=') and 'Traceback' not in r.stderr
    assert not (tmp_path / 'hf').exists()


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, 'tiktoken_cache')), reason='no tiktoken cache')
def test_gpt2_tokenizer_travels_and_hf_models_train_and_sample(tmp_path):
    model = modgpt('gpt2', vocab_size=50257)
    save_checkpoint(model, tmp_path / 'ckpt', meta={'tokenizer': {'type': 'tiktoken', 'name': 'gpt2'}})
    assert run('convert.py', 'export', tmp_path / 'ckpt', tmp_path / 'hf').returncode == 0
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / 'hf')
    assert tok.encode('Hello world') == [15496, 995]
    # sample straight from the folder, with its own tokenizer
    r = run('sample.py', f'--init_from=hf:{tmp_path / "hf"}', '--start=Hello', '--max_new_tokens=5', '--num_samples=1')
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('Hello')
    # fine-tune from it: the run starts from exactly these weights
    data = make_char_dataset(tmp_path / 'data')
    train(data, tmp_path / 'ft', f'--init_from=hf:{tmp_path / "hf"}', '--max_iters=2', '--eval_interval=2',
          '--learning_rate=0', '--dropout=0.0')
    ft = ckpt_files.load(tmp_path / 'ft' / 'ckpt_2.pt')
    assert all(torch.equal(ft['model'][k], v) for k, v in model.state_dict().items())
    assert run_logs(tmp_path / 'ft')[0]['startup_info']['architecture'] == model.config.architecture_name()


def test_hub_names_fail_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    data = make_char_dataset(tmp_path / 'data')
    r = train(data, tmp_path / 'o', '--init_from=gpt2', check=False)
    assert r.returncode == 2 and 'could not fetch gpt2 from the Hugging Face hub' in r.stderr
    r = train(data, tmp_path / 'o', '--init_from=hf:/no/such/dir', check=False)
    assert r.returncode == 2 and 'no folder /no/such/dir' in r.stderr


def test_imported_checkpoint_resumes_with_a_fresh_optimizer(tmp_path):
    hf = hf_model('llama')
    hf.save_pretrained(tmp_path / 'hf')
    convert.import_(str(tmp_path / 'hf'), str(tmp_path / 'out'))
    data = make_char_dataset(tmp_path / 'data')
    train(data, tmp_path / 'out', '--init_from=resume', '--max_iters=2', '--eval_interval=2')
    assert (tmp_path / 'out' / 'ckpt_2.pt').exists()


@pytest.mark.parametrize('kind,setting,value', [
    ('gpt2', 'scale_attn_weights', False),  # scores not divided by sqrt(head_dim)
    ('gpt2', 'scale_attn_by_inverse_layer_idx', True),  # scores also divided by layer index + 1
    ('gpt2', 'tie_word_embeddings', False),  # a head of its own, not the token embedding
    ('mixtral', 'sliding_window', 16),  # attention limited to 16 of the 32 positions
])
def test_import_refuses_settings_that_change_the_maths(kind, setting, value, tmp_path):
    hf_model(kind).save_pretrained(tmp_path)
    config, tensors = convert.read_hf_dir(str(tmp_path))
    with pytest.raises(convert.ConversionError, match=f'^cannot import {setting}={value!r}: '):
        convert.from_hf({**config, setting: value}, tensors)
    if kind == 'mixtral':  # a window as long as the context changes nothing
        convert.from_hf({**config, setting: 32}, tensors)



HAS_TIKTOKEN = os.path.isdir(os.path.join(SHARED, 'tiktoken_cache'))
SAMPLE = 'the cat sat  on 12 mats\n\n\tthe dog, 345 ☃ '  # runs of spaces, digits, a character no corpus had


def training_tokenizer(kind, folder):
    """(tokenizer spec, its files' folder) of each kind a dataset can have."""
    os.makedirs(folder, exist_ok=True)
    text = ' '.join(['the cat sat on the mat', 'the dog ran', '12 345']) * 200 + '\n'
    if kind == 'sentencepiece':
        from common import train_sentencepiece
        train_sentencepiece(text, folder, 300)
        return {'type': 'sentencepiece', 'model': 'tokenizer.model'}
    if kind == 'char':
        return {'type': 'char', 'chars': ''.join(sorted(set(SAMPLE))), 'end_of_text': True}
    if kind == 'huggingface':  # a byte-level BPE of the tokenizers library, its end of text first
        from tokenizers import Tokenizer as Bpe, decoders, models, pre_tokenizers, trainers
        bpe = Bpe(models.BPE())
        bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=['<eos>', '<bos>'],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token='<eos>',
                                             bos_token='<bos>').save_pretrained(folder / 'tok')
        return {'type': 'huggingface', 'path': 'tok'}
    return {'type': 'tiktoken', 'name': 'gpt2'}


@pytest.mark.parametrize('preset,kind', [
    ('llama', 'sentencepiece'), ('llama', 'char'), ('gpt2', 'char'), ('moe', 'huggingface'),
    *[pytest.param(preset, 'tiktoken', marks=pytest.mark.skipif(not HAS_TIKTOKEN, reason='no tiktoken cache'))
      for preset in ('llama', 'gpt2')],
])
def test_export_writes_the_training_tokenizer_and_generates_like_sample(preset, kind, tmp_path):
    spec = training_tokenizer(kind, tmp_path / 'data')
    ours_tok = Tokenizer(spec, tmp_path / 'data')
    ours, eot = modgpt(preset, vocab_size=ours_tok.vocab_size), ours_tok.eot
    prompt = ours_tok.encode('the cat')
    with torch.no_grad():  # the end-of-text token becomes the greedy choice a few tokens in: generate() must stop
        t = ours.generate(torch.tensor([prompt]), 4, temperature=0)[0, -1]
        ours.lm_head.weight[eot] = 3 * ours.lm_head.weight[t]
    save_checkpoint(ours, tmp_path / 'ckpt', meta={'tokenizer': spec}, config={'data_dir': str(tmp_path / 'data')})
    r = run('convert.py', 'export', tmp_path / 'ckpt', tmp_path / 'hf')
    assert r.returncode == 0 and 'without a tokenizer' not in r.stdout, r.stdout + r.stderr
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / 'hf')
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'hf').eval()
    ids = ours_tok.encode(SAMPLE)
    assert tok.encode(SAMPLE) == ids and tok.decode(ids) == ours_tok.decode(ids)
    # the training data's end-of-text id, not a default (a Llama config's 2 is '#' in GPT-2's BPE)
    assert tok.eos_token_id == hf.generation_config.eos_token_id == hf.config.eos_token_id == eot
    # the BOS: a Hugging Face tokenizer keeps its own, the project's tokenizers start documents after an EOT
    assert hf.config.bos_token_id == (ours_tok.hf.bos_token_id if kind == 'huggingface' else eot) is not None
    # greedy decoding as sample.py does it (temperature 0), up to the first end-of-text token
    steps = 8
    new = ours.generate(torch.tensor([prompt]), steps, temperature=0)[0, len(prompt):].tolist()
    assert eot in new
    with torch.no_grad():
        theirs = hf.generate(**tok('the cat', return_tensors='pt'), do_sample=False, max_new_tokens=steps)
    assert theirs[0].tolist() == prompt + new[:new.index(eot) + 1]

"""Document-aware training: the document-start index, sampling='documents' and attention_mask='document'."""
import json
import os

import numpy as np
import pytest
import torch

import document_attention
import loader
import perf
from document_attention import document_mask
from helpers import iteration_losses, make_char_dataset, make_sharded_dataset, run, run_logs, train
from model import GPT, GPTConfig

BLOCK = 16


@pytest.fixture(scope='module')
def sharded(tmp_path_factory):
    return make_sharded_dataset(tmp_path_factory.mktemp('sharded'))


def open_batches(data, sampling='documents', batch_size=1, accumulation=1, seed=7, document_ids=True):
    _, meta, streams = loader.open_dataset('', data)
    return loader.Batches(streams, meta, BLOCK, batch_size, accumulation, seed, sampling, 'cpu',
                          document_ids=document_ids), streams, meta


def stream_tokens(stream):
    return np.concatenate([np.fromfile(p, dtype=stream.dtype) for p in stream.paths]).astype(np.int64)


def test_document_index_equals_a_scan_of_the_tokens(sharded, tmp_path):
    batches, streams, meta = open_batches(sharded)
    for split, stream in streams.items():
        tokens = stream_tokens(stream)
        ends = np.flatnonzero(tokens == meta['eot_token']) + 1
        assert batches.doc_starts[split].tolist() == [0] + ends[ends < len(tokens)].tolist()
        assert len(batches.doc_starts[split]) == meta[f'{split}_documents']
    # the command for a dataset prepared before the index writes the same files
    names = [n for n in os.listdir(sharded) if n.endswith('.docs.bin')]
    before = {n: open(os.path.join(sharded, n), 'rb').read() for n in names}
    meta_before = json.load(open(os.path.join(sharded, 'meta.json')))
    r = run('data/add_document_index.py', sharded)
    assert r.returncode == 0, r.stderr
    assert {n: open(os.path.join(sharded, n), 'rb').read() for n in names} == before
    assert json.load(open(os.path.join(sharded, 'meta.json'))) == meta_before


def test_an_old_dataset_says_how_to_add_the_index(tmp_path):
    data = make_char_dataset(tmp_path / 'old')  # train.bin / val.bin, no end-of-text token
    with pytest.raises(ValueError, match='python data/add_document_index.py'):
        open_batches(data)
    r = train(data, tmp_path / 'o', '--max_iters=1', '--sampling=documents', check=False)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'data/add_document_index.py' in r.stderr
    r = run('data/add_document_index.py', data)
    assert r.returncode == 0 and 'each split is one document' in r.stdout, r.stderr
    batches, streams, _ = open_batches(data)
    assert batches.doc_starts['train'].tolist() == [0]
    # one document: its windows are block-sized pieces of it, like the epoch windows without their overlap token
    assert batches.window_starts.tolist() == list(range(0, streams['train'].total, BLOCK))


def test_windows_start_at_documents_and_cover_every_token_once_per_epoch(sharded):
    batches, streams, _ = open_batches(sharded)
    starts, docs = batches.window_starts, set(batches.doc_starts['train'].tolist())
    total, tokens = streams['train'].total, stream_tokens(streams['train'])
    for k, start in enumerate(starts.tolist()):
        # a window starts at a document, or continues the document of the window before, block tokens on
        assert start in docs or (k and start - starts[k - 1] == BLOCK and not docs & set(range(start - BLOCK + 1, start + 1)))
    assert np.all(np.diff(np.append(starts, total)) <= BLOCK)
    # one epoch of batches (batch_size 1: sample = iteration): every token but the first is a target exactly once
    seen = np.zeros(total, dtype=np.int64)
    key = int(np.random.default_rng([7, 2, 0]).integers(2 ** 63))  # epoch 0's order, as loader.Batches draws it
    order = loader.permute(np.arange(batches.windows_per_epoch), batches.windows_per_epoch, key)
    for iteration in range(batches.windows_per_epoch):
        x, y, doc, _ = batches.train(iteration, 0)
        start, valid = int(starts[order[iteration]]), (y[0] >= 0).numpy()
        assert x[0, :min(BLOCK, total - start)].tolist() == tokens[start:start + BLOCK].tolist()
        assert doc[0].tolist() == (np.searchsorted(batches.doc_starts['train'], start + np.arange(BLOCK), 'right') - 1).tolist()
        positions = start + 1 + np.flatnonzero(valid)
        assert y[0][valid].tolist() == tokens[positions].tolist()
        seen[positions] += 1
    assert seen[0] == 0 and (seen[1:] == 1).all()
    assert batches.epoch(batches.windows_per_epoch) == 1.0


def test_a_batch_is_a_pure_function_of_seed_iteration_and_micro_step(sharded):
    one, _, _ = open_batches(sharded, batch_size=3, accumulation=4)
    straight = {(i, m): one.train(i, m) for i in range(6) for m in range(4)}
    for world in (2, 4):  # ranks take micro-steps r, r+W, ...; a resumed run starts at iteration 3
        ranks, _, _ = open_batches(sharded, batch_size=3, accumulation=4)
        for i in range(3, 6):
            for r in range(world):
                for m in range(r, 4, world):
                    got = ranks.prefetch(i, m).result()
                    assert all(torch.equal(a, b) for a, b in zip(got[:3], straight[i, m][:3])) and got[3] == straight[i, m][3]
    other, _, _ = open_batches(sharded, batch_size=3, accumulation=4, seed=8)
    assert not torch.equal(other.train(0, 0)[0], straight[0, 0][0])


def tiny(**fields):
    # head size 16: FlexAttention's CUDA kernel needs at least that, and its path is taken only from there
    config = GPTConfig.from_preset('llama', **{**dict(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=13,
                                                      attention_mask='document'), **fields})
    torch.manual_seed(0)
    return GPT(config).eval()


def force_flex(monkeypatch):
    """FlexAttention's path on the CPU (forward only there); counts the block masks built and the flex calls."""
    monkeypatch.setattr(document_attention, 'FLEX', True)
    calls = {'block_mask': 0, 'flex': 0}
    for name in calls:
        def counted(*args, _name=name, _fn=getattr(document_attention, name)):
            calls[_name] += 1
            return _fn(*args)
        monkeypatch.setattr(document_attention, name, counted)
    return calls


@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
@pytest.mark.parametrize('backend', ['sdpa', 'manual', 'flex'])
def test_changing_one_document_leaves_the_next_ones_logits_unchanged(backend, monkeypatch):
    calls = force_flex(monkeypatch) if backend == 'flex' else None
    model = tiny(attention_backend='manual' if backend == 'manual' else 'sdpa')
    x = torch.randint(0, 13, (2, 24))
    doc = torch.tensor([[0] * 9 + [1] * 7 + [2] * 8, [5] * 24])
    changed = x.clone()
    changed[0, :9] = (x[0, :9] + 1) % 13  # every token of the first document
    with torch.no_grad():
        before, after = model(x, document_ids=doc)[0], model(changed, document_ids=doc)[0]
        causal = model(changed)[0]  # no document ids: the row is one document
    assert torch.equal(before[0, 9:], after[0, 9:])
    assert not torch.allclose(before[0, :9], after[0, :9])
    assert not torch.allclose(before[0, 9:], causal[0, 9:], atol=1e-3)
    # and the mask does something: the same row without document ids (one document) gives other logits
    assert not torch.allclose(before[0, 9:], model(x)[0][0, 9:].detach(), atol=1e-3)
    assert torch.equal(before[1], after[1])
    assert calls is None or calls == {'block_mask': 2, 'flex': 4}  # two forwards with document ids, two layers


@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
@pytest.mark.parametrize('heads', [dict(n_head=2), dict(n_head=4, n_kv_head=2)], ids=['mha', 'gqa'])
def test_sdpa_manual_and_flex_masks_equal_separate_forwards(heads, monkeypatch):
    # RoPE depends only on relative positions, so a document alone at position 0 sees what it sees packed
    fields = dict(n_embd=16 * heads['n_head'], **heads)  # head size 16
    sdpa, manual = tiny(**fields), tiny(attention_backend='manual', **fields)
    lengths = [[5, 11, 8], [24]]
    x = torch.randint(0, 13, (2, 24))
    doc = torch.stack([torch.repeat_interleave(torch.arange(len(n)), torch.tensor(n)) for n in lengths])
    with torch.no_grad():
        a, b = sdpa(x, document_ids=doc)[0], manual(x, document_ids=doc)[0]
        alone = torch.cat([torch.cat([sdpa(piece)[0] for piece in row.split(n, dim=1)], dim=1)
                           for row, n in zip(x.unsqueeze(1), lengths)])
        calls = force_flex(monkeypatch)
        flexed = sdpa(x, document_ids=doc)[0]
    assert calls == {'block_mask': 1, 'flex': sdpa.config.n_layer}  # one block mask per forward, shared by the layers
    for other in (b, alone, flexed):
        assert torch.allclose(a, other, atol=1e-5)


def test_the_block_mask_is_the_boolean_mask():
    doc = torch.tensor([[0] * 9 + [1] * 119 + [2] * 88, [5] * 216])  # blocks of 128 x 128: two (and a part) a side
    blocks = document_attention.block_mask(doc)
    b, q, kv = torch.arange(2).view(2, 1, 1, 1), torch.arange(216).view(1, 1, -1, 1), torch.arange(216).view(1, 1, 1, -1)
    assert torch.equal(blocks.mask_mod(b, torch.zeros_like(b), q, kv), document_mask(doc))
    # the blocks computed: document 2 starts at the second block of row 0, so that block's queries skip the first
    assert blocks.to_dense()[:, 0].tolist() == [[[1, 0], [0, 1]], [[1, 0], [1, 1]]]


def test_flex_runs_on_cuda_without_dropout_and_the_report_names_it(monkeypatch):
    config = tiny().config
    assert document_attention.uses_flex(config, 'cuda', training=True)
    assert not document_attention.uses_flex(config, 'cpu', training=False)  # no backward there
    for other in (dict(dropout=0.1), dict(attention_backend='manual'), dict(n_embd=16)):  # n_embd 16: head size 8
        c = tiny(**other).config
        assert not document_attention.uses_flex(c, 'cuda', training=True)
    assert document_attention.uses_flex(tiny(dropout=0.1).config, 'cuda', training=False)
    monkeypatch.setattr(document_attention, 'FLEX', True)
    monkeypatch.setattr(document_attention, 'why_flex_fails', lambda *args: None)  # as on a working CUDA host
    assert perf.attention_for_run('auto', config, 'cpu', 'float32')[1] == 'flex'
    dropout = tiny(dropout=0.1).config
    assert perf.attention_for_run('auto', dropout, 'cpu', 'float32')[1].startswith('flex (training with dropout: ')
    # flash_attention='require' refuses: FlexAttention is not FlashAttention
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (9, 0))
    assert 'FlexAttention' in perf.why_no_flash_attention(config, 'cuda', 'bfloat16')


def test_a_flex_that_cannot_run_is_one_line_at_start_up(monkeypatch):
    # a real failure: FlexAttention has no backward on the CPU, which the start-up probe meets like a missing compiler
    config = tiny().config
    why = document_attention.why_flex_fails(config, 'cpu', torch.float32)
    assert why and 'backward' in why and '\n' not in why
    monkeypatch.setattr(document_attention, 'FLEX', True)
    with pytest.raises(ValueError, match="runs FlexAttention on cpu, which failed here: .*attention_backend='manual'"):
        perf.attention_for_run('auto', config, 'cpu', 'float32')


def test_eval_py_forwards_take_no_document_ids_so_no_flex_probe_and_no_refusal(monkeypatch):
    monkeypatch.setattr(document_attention, 'FLEX', True)
    monkeypatch.setattr(document_attention, 'why_flex_fails', lambda *args: pytest.fail('probed'))
    kernel = perf.attention_for_run('auto', tiny().config, 'cpu', 'float32', document_ids=False)[1]
    assert 'flex' not in kernel


@pytest.mark.parametrize('backend', ['sdpa', 'manual'])
def test_document_masked_attention_gradients(backend):
    config = GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=6, vocab_size=5, bias=True,
                       attention_backend=backend, attention_mask='document')
    torch.manual_seed(0)
    attention = GPT(config).double().blocks[0].attn
    mask = document_mask(torch.tensor([[0, 0, 1, 1, 1, 2], [3, 3, 3, 3, 3, 3]]))
    x = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: attention(inp, None, None, mask), (x,))


def test_training_with_both_switches_resumes_bit_exactly(sharded, tmp_path):
    common = ['--sampling=documents', '--attention_mask=document', '--block_size=48', '--log_interval=1', '--eval_interval=3',
              '--dropout=0.1', '--gradient_accumulation_steps=2', '--warmup_iters=2', '--lr_decay_iters=8']
    train(sharded, tmp_path / 'straight', '--max_iters=8', *common)
    train(sharded, tmp_path / 'split', '--max_iters=4', *common)
    resumed = train(sharded, tmp_path / 'split', '--max_iters=8', '--init_from=resume', *common)
    assert 'resuming from' in resumed.stdout
    assert iteration_losses(tmp_path / 'straight') == iteration_losses(tmp_path / 'split')
    a = torch.load(tmp_path / 'straight' / 'ckpt_8.pt', weights_only=True)
    b = torch.load(tmp_path / 'split' / 'ckpt_8.pt', weights_only=True)
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert a['model_args']['attention_mask'] == 'document'
    log = run_logs(tmp_path / 'straight')[0]
    assert log['startup_info']['dataset']['sampling'] == 'documents'
    # the causal run on the same batches computes something else
    train(sharded, tmp_path / 'causal', '--max_iters=2', *common[:1], *common[2:])  # windows of 48 hold several documents
    assert iteration_losses(tmp_path / 'causal')[2] != iteration_losses(tmp_path / 'straight')[2]
    # the mask is a training choice a resume may switch on (the weights are the same either way)
    train(sharded, tmp_path / 'causal', '--max_iters=3', '--init_from=resume', *common)
    assert torch.load(tmp_path / 'causal' / 'ckpt_3.pt', weights_only=True)['model_args']['attention_mask'] == 'document'
    # a checkpoint trained with the mask samples as before (no document ids: the prompt is one document)
    r = run('sample.py', f'--out_dir={tmp_path / "straight"}', '--num_samples=1', '--max_new_tokens=5',
            '--device=cpu', '--start=ab')
    assert r.returncode == 0, r.stderr


def test_two_ranks_train_like_one_process(sharded, tmp_path):
    from test_distributed import torchrun
    args = ['--sampling=documents', '--attention_mask=document', '--block_size=48', '--max_iters=4',
            '--gradient_accumulation_steps=2', '--eval_interval=100', '--log_interval=1']
    train(sharded, tmp_path / 'single', *args)
    torchrun(sharded, tmp_path / 'ddp', *args, '--parallelism=ddp')
    assert run_logs(tmp_path / 'ddp')[0]['startup_info']['dataset']['sampling'] == 'documents'
    assert iteration_losses(tmp_path / 'ddp') == iteration_losses(tmp_path / 'single')


def test_export_writes_a_document_masked_model_as_the_causal_model_it_is():
    pytest.importorskip('transformers')
    import convert
    model = tiny()
    hf, tensors = convert.to_hf(model.config, model.state_dict(), eot=12)
    config, state = convert.from_hf(hf.to_dict(), tensors)
    assert config.attention_mask == 'causal'
    imported = GPT(config).eval()
    imported.load_state_dict(state)
    x = torch.randint(0, 13, (2, 24))
    with torch.no_grad():
        assert torch.allclose(imported(x)[0], model(x)[0], atol=1e-6)


def test_a_split_ending_in_an_empty_document_gets_no_window_without_targets():
    # tokens 1 2 3 EOT 5 6 7 EOT EOT: a window from the last token would own nothing, its loss a NaN
    starts = np.array([0, 4, 8, 9])[:3]  # document starts after each EOT but the split's end
    windows = np.asarray(loader.packed_windows(starts, 9, 4))
    assert list(windows) == [0, 4] and (windows < 9 - 1).all()
    assert list(loader.packed_windows(np.array([0, 5]), 12, 4)) == [0, 4, 5, 9]  # a long document continues

"""bench/gpu.py, the one command for every GPU figure, in its tiny version: every step runs on a CPU."""
import functools
import json
import os
import sys

from helpers import ROOT, run

sys.path.insert(0, os.path.join(ROOT, 'bench'))
import bench  # noqa: E402  (the module gpu.py imports: its synthetic data is patched below)


def test_gpu_bench_runs_every_step_in_its_tiny_version(tmp_path, monkeypatch):
    text = tmp_path / 'shakespeare.txt'
    text.write_text('First Citizen:\nBefore we proceed any further, hear me speak.\n\n' * 400)
    # the synthetic tokens in a 512-token vocabulary, not GPT-2's 50,257: the steps in bf16 (throughput, fsdp_1.36b)
    # spent most of their time in the 50,257-wide head, and bf16 runs at ~1 GFLOP/s on a CPU without bf16 units.
    # The same steps, dtypes and code paths; no assertion below depends on the vocabulary
    monkeypatch.setattr(bench, 'synthetic_data', functools.partial(bench.synthetic_data, vocab_size=512))
    # in-process (its steps start train.py and torchrun themselves); one model in the throughput step (the MoE,
    # compiled too): the other presets' graphs are tested elsewhere
    result = run('bench/gpu.py', f'--results_dir={tmp_path}', f'--shakespeare={text}',
                 '--models=config/full_moe_200m.py')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [path] = [p for p in os.listdir(tmp_path) if p.endswith('.json')]
    record = json.loads((tmp_path / path).read_text())
    steps = record['steps']
    assert record['tiny'] and record['torch'] and record['git_commit'] is not None
    assert steps['flash']['status'] == 'unavailable' and 'CUDA' in steps['flash']['reason']  # refused, clearly
    rows = steps['throughput']['rows']
    assert [r['compile'] for r in rows] == [False, True] and all(r['tokens_per_sec'] > 0 for r in rows)
    assert all(r['dtype'] == 'bfloat16' for r in rows)  # the bf16 path, which no other test runs through train.py
    assert steps['fsdp']['status'] == 'ok' and steps['fsdp']['max_loss_difference'] <= 1e-6
    big = steps['fsdp_1.36b']
    assert big['status'] == 'ok' and big['peak_host_mib'] > 0 and big['first_step_s'] is not None
    shakespeare = steps['shakespeare']
    assert shakespeare['status'] == 'ok' and shakespeare['reached'] and shakespeare['seconds_to_target'] > 0
    table = (tmp_path / path.replace('.json', '.md')).read_text()
    assert '| fsdp |' in table and 'full_moe_200m, compiled' in table and 'tiny version' in table


def test_gpu_bench_rejects_bad_arguments(tmp_path):
    # in-process: the same exit status and stderr as a command (errors.die), each refused before any step starts
    for args, message in ((['--steps=flash,warp'], "unknown step 'warp'"),
                          (['--models=config/nope.py'], 'no config file config/nope.py'),
                          (['--shakespeare=/nonexistent.txt'], 'no such file')):
        result = run('bench/gpu.py', *args, f'--results_dir={tmp_path}')
        assert result.returncode == 2 and message in result.stderr and 'Traceback' not in result.stderr


def test_rope_tables_are_built_on_the_cpu_whatever_the_default_device():
    # train.py builds the model under `with torch.device('cuda')`: tables built there differed in the last digits
    # from the CPU's (and between plain and FSDP builds); the meta device stands in for CUDA here
    import torch
    from model import GPT, GPTConfig
    config = GPTConfig.from_preset('llama', n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=61)
    direct = GPT(config)
    with torch.device('meta'):
        model = GPT(config)
    model.to_empty(device='cpu')
    with torch.device('meta'):
        model.init_weights()
    assert torch.equal(model.rope_cos, direct.rope_cos) and torch.equal(model.rope_sin, direct.rope_sin)


def test_the_kernel_probe_runs_what_training_runs(monkeypatch):
    # SDPA picks its kernel by the sequence length and by whether the inputs need gradients: the probe behind
    # flash_attention's checks and the kernel train.py names uses the run's own, and draws no random numbers
    import torch
    import perf
    from model import GPTConfig
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append((q.shape, k.shape, q.requires_grad, kwargs['enable_gqa']))
        return sdpa(q, k, v, **kwargs)
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention', spy)
    config = GPTConfig.from_preset('moe', n_layer=1, n_head=4, n_kv_head=2, n_embd=64, block_size=512)
    state = torch.get_rng_state()
    assert perf.sdpa_backend_in_use(config, 'cpu', torch.float32, perf.attention_context('auto')) != 'manual'
    assert calls == [((1, 4, 512, 16), (1, 2, 512, 16), True, True)] and torch.equal(state, torch.get_rng_state())


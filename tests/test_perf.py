import json
import os

import pytest
import torch

import perf
from helpers import iteration_losses, make_char_dataset, run, run_logs, train
from model import GPT, GPTConfig, MoE


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_char_dataset(tmp_path_factory.mktemp('data'))


@pytest.mark.parametrize('name,dtype,expected', [
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989.4), ('NVIDIA H100 80GB HBM3', 'float32', 494.7),
    ('NVIDIA H100 PCIe', 'bfloat16', 756.0), ('NVIDIA H100 NVL', 'float16', 835.5), ('NVIDIA H200', 'bfloat16', 989.4),
    ('NVIDIA H200 NVL', 'bfloat16', 835.5), ('NVIDIA H200 NVL', 'float32', 417.5), ('NVIDIA GH200 480GB', 'bfloat16', 989.4),
    ('NVIDIA B200', 'bfloat16', 2250.0), ('NVIDIA A100-SXM4-80GB', 'bfloat16', 312.0),
    ('NVIDIA A100-PCIE-40GB', 'float32', 156.0), ('NVIDIA A10', 'bfloat16', 125.0), ('NVIDIA L40S', 'bfloat16', 362.05),
    ('NVIDIA L40', 'bfloat16', 181.05), ('NVIDIA L40', 'float32', 90.5), ('NVIDIA A40', 'bfloat16', 149.7),
    ('NVIDIA L4', 'bfloat16', 121.0), ('NVIDIA GeForce RTX 4090', 'bfloat16', 165.2),
    ('NVIDIA GeForce RTX 3090', 'bfloat16', 71.0), ('NVIDIA GeForce RTX 3060', 'float16', 25.6),
    ('NVIDIA RTX A6000', 'bfloat16', 154.8), ('Tesla T4', 'float16', 65.0), ('Tesla T4', 'float32', 8.1),
    ('Tesla V100-SXM2-16GB', 'float16', 125.0), ('Tesla V100-SXM2-16GB', 'float32', 15.7),
    ('Tesla V100-PCIE-32GB', 'float16', 112.0), ('Tesla V100-PCIE-32GB', 'float32', 14.0),
])
def test_gpu_peak_lookup(name, dtype, expected):
    assert perf.gpu_peak_tflops(name, dtype) == expected
    assert perf.peak_tflops('cuda', name, dtype) == (expected, 'datasheet')


@pytest.mark.parametrize('name', ['NVIDIA RTX A1000', 'NVIDIA A10G', 'NVIDIA GeForce RTX 3060 Ti', 'NVIDIA L4000',
                                  'NVIDIA GeForce RTX 4090 Laptop GPU', 'NVIDIA A100-SXM4-40GB MIG 1g.5gb',
                                  'Imaginary GPU 9000'])
def test_a_gpu_is_matched_by_whole_model_names_not_fragments(name):
    # 'L40' once matched 'L4' and 'RTX A1000' matched 'A100': an MFU 1.5x or 40x off. Unknown GPUs get no MFU.
    assert perf.gpu_peak_tflops(name, 'bfloat16') is None


def test_unknown_gpu_and_override():
    peak, why = perf.peak_tflops('cuda', 'Imaginary GPU 9000', 'bfloat16')
    assert peak is None and 'unknown GPU' in why and 'peak_tflops' in why
    assert perf.peak_tflops('cuda', 'Imaginary GPU 9000', 'bfloat16', override=123.0) == (123.0, 'peak_tflops setting')
    assert perf.peak_tflops('cuda', 'NVIDIA H100 80GB HBM3', 'bfloat16', override=500)[0] == 500.0
    assert perf.peak_tflops('mps', 'mps', 'float32')[0] is None


def test_cpu_peak_is_measured_once_per_machine_and_mfu_arithmetic(tmp_path, monkeypatch):
    monkeypatch.setenv('MODGPT_CACHE_DIR', str(tmp_path))
    peak, why = perf.peak_tflops('cpu', 'cpu', 'float32')
    assert 0.001 < peak < 100 and why.startswith('measured float32 matmul') and str(tmp_path) in why
    cache = json.load(open(tmp_path / 'cpu_peak.json'))
    (key, entry), = cache.items()
    assert 'float32' in key and 'torch' in key and entry['tflops'] == peak
    assert entry['how'] in [f"best of 5 matmuls at each of sizes {', '.join(map(str, sizes))}"
                            for sizes in ([256, 1024], [256, 1024, 2048], [256, 1024, 2048, 3072])]
    entry['tflops'] = 0.123  # later runs read the cached figure: MFUs of one machine compare
    (tmp_path / 'cpu_peak.json').write_text(json.dumps(cache))
    assert perf.peak_tflops('cpu', 'cpu', 'float32')[0] == 0.123


def test_a_dtype_this_cpu_runs_slowly_is_measured_on_small_sizes_only(tmp_path, monkeypatch):
    # bf16 on a CPU without AVX-512/AMX runs at ~1 GFLOP/s: a 3072 matmul would take a minute per repeat
    monkeypatch.setenv('MODGPT_CACHE_DIR', str(tmp_path))
    sizes = []

    def slow(dtype, size, repeats):  # 4 GFLOP/s
        sizes.append(size)
        return 4e-3, 2 * size ** 3 / 4e9
    monkeypatch.setattr(perf, '_matmul_tflops', slow)
    assert perf.measure_cpu_peak_tflops('bfloat16')[0] == 4e-3
    assert sizes == [256, 1024]  # 2048 would take 6 x 4.3 s


def test_measuring_again_keeps_the_best_measurement(tmp_path, monkeypatch):
    monkeypatch.setenv('MODGPT_CACHE_DIR', str(tmp_path))
    speed = [2e-3]
    monkeypatch.setattr(perf, '_matmul_tflops', lambda dtype, size, repeats: (speed[0], 2 * size ** 3 / 1e12 / speed[0]))
    assert perf.measure_cpu_peak_tflops('float32')[0] == 2e-3
    speed[0] = 1e-3  # a busy machine: the lower figure is not kept
    assert perf.measure_cpu_peak_tflops('float32', again=True)[0] == 2e-3
    speed[0] = 3e-3
    assert perf.measure_cpu_peak_tflops('float32')[0] == 2e-3  # cached: not measured without again
    assert perf.measure_cpu_peak_tflops('float32', again=True)[0] == 3e-3
    assert list(tmp_path.iterdir()) == [tmp_path / 'cpu_peak.json']  # no temp file left


def test_a_cpu_peak_below_what_the_run_reaches_is_measured_again_and_mfu_stays_honest(data, tmp_path, monkeypatch):
    # the first run measured the peak on a busy machine: the cache holds a figure far below what a run reaches
    monkeypatch.setenv('MODGPT_CACHE_DIR', str(tmp_path / 'cache'))
    perf.measure_cpu_peak_tflops('float32', sizes=(), repeats=1)
    path = tmp_path / 'cache' / 'cpu_peak.json'
    cache = json.loads(path.read_text())
    (key, entry), = cache.items()
    real = entry['tflops']
    entry['tflops'] = 1e-9
    path.write_text(json.dumps(cache))
    r = train(data, tmp_path / 'o', '--max_iters=6', '--log_interval=2', '--eval_interval=6')
    assert r.stdout.count('measured again') == 1, r.stdout  # once per run
    assert json.loads(path.read_text())[key]['tflops'] > 1e-9  # the stale figure is gone for the next run
    assert r.stdout.index('measured again') < r.stdout.index('ms/iter')  # before the first line prints an MFU
    log = run_logs(tmp_path / 'o')[0]
    assert log['startup_info']['performance']['peak_tflops'] > 1e-9  # the log's header has the new peak
    assert 'peak per device      0.00 TFLOP/s' in r.stdout  # the start-up report had said the stale one
    assert all(0 < e['mfu'] < 1 for e in log['training_iterations']) and 'above the peak' not in r.stdout
    assert real > 0
    # a peak_tflops setting is the user's: never measured over, but an MFU above 100% is flagged on the line
    r = train(data, tmp_path / 'p', '--max_iters=2', '--log_interval=2', '--eval_interval=6', '--peak_tflops=1e-9')
    assert 'measured again' not in r.stdout and 'above the peak: check peak_tflops' in r.stdout


def test_training_logs_mfu_fields(data, tmp_path):
    train(data, tmp_path / 'o', '--max_iters=4', '--log_interval=2', '--eval_interval=4', '--peak_tflops=0.5')
    log = run_logs(tmp_path / 'o')[0]
    info = log['startup_info']['performance']
    assert info['peak_tflops'] == 0.5 and info['peak_source'] == 'peak_tflops setting'
    assert log['startup_info']['hardware']['attention_kernel'] in ('flash (CPU kernel)', 'math')
    assert log['startup_info']['warmup_s'] > 0
    for e in log['training_iterations']:
        assert e['flops_per_token'] == info['flops_per_token']
        assert e['achieved_tflops'] == pytest.approx(e['flops_per_token'] * e['tokens_per_sec'] / 1e12)
        assert e['mfu'] == pytest.approx(e['achieved_tflops'] / 0.5)
    assert log['summary']['median_mfu'] > 0 and log['summary']['median_time_ms'] > 0


def test_flash_attention_require_fails_clearly_on_cpu(data, tmp_path):
    r = train(data, tmp_path / 'o', '--flash_attention=require', check=False)
    assert r.returncode == 2 and "flash_attention='require'" in r.stderr and 'needs CUDA' in r.stderr
    train(data, tmp_path / 'p', '--flash_attention=off', '--max_iters=1', '--eval_iters=0')
    assert run_logs(tmp_path / 'p')[0]['startup_info']['hardware']['attention_kernel'] == 'math'


def test_compiled_run_checkpoint_reloads_uncompiled(data, tmp_path):
    args = ['--max_iters=2', '--eval_iters=0', '--n_layer=1', '--log_interval=1']
    train(data, tmp_path / 'compiled', *args, '--compile=True')
    train(data, tmp_path / 'eager', *args)
    a = torch.load(tmp_path / 'compiled' / 'ckpt_2.pt', weights_only=True)
    b = torch.load(tmp_path / 'eager' / 'ckpt_2.pt', weights_only=True)
    assert list(a['model']) == list(b['model'])  # the same keys: no _orig_mod. prefixes
    models = []
    for ckpt in (a, b):
        model = GPT(GPTConfig(**ckpt['model_args']))
        model.load_state_dict(ckpt['model'])  # strict
        models.append(model.eval())
    idx = torch.randint(0, 12, (2, 16))
    torch.testing.assert_close(models[0](idx)[0], models[1](idx)[0], atol=1e-4, rtol=1e-4)
    compiled, eager = iteration_losses(tmp_path / 'compiled'), iteration_losses(tmp_path / 'eager')
    assert compiled[1] == pytest.approx(eager[1], abs=1e-5) and compiled[2] == pytest.approx(eager[2], abs=1e-4)


def test_muon_trains(tmp_path):
    data = make_char_dataset(tmp_path / 'd', text='the quick brown fox jumps over the lazy dog. ' * 16)
    train(data, tmp_path / 'o', '--optimizer=muon', '--max_iters=30', '--learning_rate=1e-2', '--warmup_iters=2',
          '--log_interval=1', '--eval_interval=30')
    losses = iteration_losses(tmp_path / 'o')
    assert losses[30] < 0.5 * losses[1]
    ck = torch.load(tmp_path / 'o' / 'ckpt_30.pt', weights_only=True)  # both optimizers' state, by parameter name
    assert 'blocks.0.attn.c_attn.weight' in ck['optimizer']['state'] and 'wte.weight' in ck['optimizer']['state']
    train(data, tmp_path / 'o', '--optimizer=muon', '--max_iters=31', '--init_from=resume', '--eval_interval=31')


@pytest.mark.parametrize('ffn_type', ['standard', 'swiglu'])
def test_moe_grouped_dispatch_equals_per_token_reference(ffn_type):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, ffn_hidden=16, ffn_type=ffn_type, bias=True, n_expert=4,
                    n_expert_per_token=2)
    moe = MoE(cfg).double()
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(3, 5, 8, dtype=torch.double, requires_grad=True)
    out, _ = moe(x)

    def expert(t, e):  # one token through one expert, written out by hand
        up = moe.w_up[e] @ t + moe.b_up[e]
        if ffn_type == 'standard':
            h = torch.nn.functional.gelu(up, approximate='tanh')
        else:
            h = torch.nn.functional.silu(moe.w_gate[e] @ t + moe.b_gate[e]) * up
        return moe.w_down[e] @ h + moe.b_down[e]
    rows = []
    for t in x.reshape(-1, 8):
        probs = torch.softmax(moe.router.weight @ t, dim=-1)
        weights, chosen = probs.topk(2)
        weights = weights / weights.sum()
        rows.append(sum(w * expert(t, int(e)) for w, e in zip(weights, chosen)))
    reference = torch.stack(rows).view(3, 5, 8)
    torch.testing.assert_close(out, reference)
    grads = torch.autograd.grad(out.square().sum(), [x, *moe.parameters()])
    ref_grads = torch.autograd.grad(reference.square().sum(), [x, *moe.parameters()])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_bench_runs_two_iterations(tmp_path):
    r = run('bench/bench.py', 'llama', 'config/preset_quick_test.py', '--iters=2', '--n_layer=1', '--n_embd=32',
            '--n_head=2', '--n_kv_head=1', '--block_size=16', '--batch_size=2', '--vocab_size=100',
            f'--results_dir={tmp_path}')
    assert r.returncode == 0, r.stdout + r.stderr
    [name] = os.listdir(tmp_path)
    record = json.load(open(tmp_path / name))
    assert record['torch'] == torch.__version__ and record['git_commit'] and len(record['rows']) == 2
    for row in record['rows']:
        assert row['ms_per_iter'] > 0 and row['tokens_per_sec'] > 0 and row['mfu'] > 0 and row['peak_memory_mb'] > 0
        assert row['timed_iters'] == 1
    assert 'ms/iter' in r.stdout and 'llama' in r.stdout
    bad = run('bench/bench.py', 'gpt5')
    assert bad.returncode == 2 and 'neither a config file nor a preset' in bad.stderr


def test_bench_against_another_checkout_alternates_and_gives_the_ratio(tmp_path):
    from helpers import ROOT
    other = tmp_path / 'other'  # another checkout: here the same files under another path
    other.symlink_to(ROOT)
    results = tmp_path / 'results'
    r = run('bench/bench.py', 'llama', '--iters=2', '--n_layer=1', '--n_embd=32', '--n_head=2', '--block_size=16',
            '--batch_size=2', '--vocab_size=100', f'--against={other}', '--rounds=1', f'--results_dir={results}')
    assert r.returncode == 0, r.stdout + r.stderr
    [name] = os.listdir(results)
    record = json.load(open(results / name))
    assert [row['tree'] for row in record['rows']] == [ROOT, str(other)] and record['against'] == str(other)
    [ratio] = record['ratios']
    medians = [row['ms_per_iter'] for row in record['rows']]
    assert ratio['this_over_against'] == pytest.approx(medians[0] / medians[1]) and 'ms/iter / ' in r.stdout
    bad = run('bench/bench.py', 'llama', f'--against={results}')
    assert bad.returncode == 2 and 'no train.py there' in bad.stderr


@pytest.mark.parametrize('native,expected', [(True, 'bfloat16'), (False, 'float16')])
def test_auto_dtype_takes_bf16_only_where_tensor_cores_run_it(monkeypatch, native, expected):
    # a V100 or T4 reports bf16 'supported' by emulation: it must get float16 + GradScaler, not software bf16
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: including_emulation or native)
    assert perf.auto_dtype('cuda') == expected
    assert perf.auto_dtype('cpu') == 'float32' and perf.auto_dtype('mps') == 'float32'


def test_an_older_torch_gets_one_line_naming_the_version_a_feature_needs(data, tmp_path, monkeypatch):
    monkeypatch.delattr(torch.optim, 'Muon')  # as on torch < 2.9
    r = train(data, tmp_path / 'o', '--optimizer=muon', '--max_iters=1', check=False)
    assert r.returncode == 2 and r.stderr.strip() == \
        f"error: optimizer='muon' needs torch>=2.9 (torch.optim.Muon); this is torch {torch.__version__}"
    monkeypatch.delattr(torch, '_grouped_mm')
    r = train(data, tmp_path / 'o', '--arch_preset=moe', '--n_kv_head=1', '--max_iters=1', check=False)
    assert r.returncode == 2 and 'n_expert=8 is invalid' in r.stderr and 'MoE needs torch>=2.9' in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

"""Downstream evaluation (downstream.py, eval.py): lm-eval's prompts and metrics on synthetic items, batching,
ranks, the in-training path, and parity with lm-evaluation-harness itself when it is installed."""
import json
import os
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import downstream
from helpers import SHARED, make_char_dataset, run, run_logs, train
from tokenizer import Tokenizer

ITEMS = {
    'hellaswag': [{'ind': 1, 'activity_label': 'Roof shingle removal', 'ctx_a': 'A man is on a roof.', 'ctx_b': 'he',
                   'endings': ['is using wrap [title] to wrap skis.', 'is ripping tiles.', 'holds a cube.', 'starts.'],
                   'label': '3'}],
    'arc_easy': [{'id': 'q1', 'question': 'Which is a gas?', 'choices': {'text': ['air', 'a rock of granite'],
                                                                        'label': ['A', 'B']}, 'answerKey': 'B'}],
    'arc_challenge': [{'id': 'q2', 'question': 'Pick one.', 'choices': {'text': ['x', 'yy', 'zzz'],
                                                                      'label': ['1', '2', '3']}, 'answerKey': '1'}],
    'piqa': [{'goal': 'Open a jar', 'sol1': 'twist the lid', 'sol2': 'hit it', 'label': 1}],
    'winogrande': [{'sentence': 'Sarah was a better surgeon than Maria so _ got the easier cases.', 'option1': 'Sarah',
                    'option2': 'Maria', 'answer': '2'}],
    'lambada': [{'text': 'the cat sat on the mat and then the cat sat on the mat'}],
}
# every prompt and continuation: training text that holds each character the tasks need
PROMPTS = ' '.join(c + k for task, items in ITEMS.items() for c, k in downstream.requests_of(task, items[0])[0])


def test_requests_follow_lm_eval_prompts():
    requests, gold, choices = downstream.requests_of('hellaswag', ITEMS['hellaswag'][0])
    assert requests[0][0] == 'Roof shingle removal: A man is on a roof. He' and gold == 3
    assert choices[0] == 'is using wrap. to wrap skis.'  # ' [title]' becomes '. ', then the double space goes
    requests, gold, _ = downstream.requests_of('arc_easy', ITEMS['arc_easy'][0])
    assert requests == [('Question: Which is a gas?\nAnswer:', ' air'), ('Question: Which is a gas?\nAnswer:',
                                                                       ' a rock of granite')] and gold == 1
    requests, gold, _ = downstream.requests_of('winogrande', ITEMS['winogrande'][0])
    assert requests == [('Sarah was a better surgeon than Maria so Sarah', ' got the easier cases.'),
                        ('Sarah was a better surgeon than Maria so Maria', ' got the easier cases.')] and gold == 1
    requests, _, _ = downstream.requests_of('lambada', ITEMS['lambada'][0])
    assert requests == [('the cat sat on the mat and then the cat sat on the', ' mat')]
    with pytest.raises(downstream.EvalError, match='allowed: hellaswag'):
        downstream.requests_of('mmlu', {})


class UnigramModel(torch.nn.Module):
    """Next-token log-probabilities that ignore the input: a sum over a continuation is known in advance."""
    def __init__(self, vocab_size, block_size=64, seed=0):
        super().__init__()
        self.logits = torch.randn(vocab_size, generator=torch.Generator().manual_seed(seed)) * 3
        self.config = type('Config', (), {'block_size': block_size})

    def forward(self, idx, targets=None, keep=None):
        logits = self.logits.expand(*idx.shape, -1).clone()
        return (logits if keep is None else logits[keep]), None


def char_tokenizer(texts):
    return Tokenizer({'type': 'char', 'chars': ''.join(sorted(set(''.join(texts)))), 'end_of_text': True})


def test_acc_and_acc_norm_pick_what_their_definitions_say():
    # one short choice with a high total and one long choice whose per-character score is higher
    item = {'id': 'q', 'question': 'Q?', 'choices': {'text': ['ab', 'cccccccccc'], 'label': ['A', 'B']},
            'answerKey': 'A'}
    tok = char_tokenizer(['Question: Q?\nAnswer: abcdefghij'])
    model = UnigramModel(tok.vocab_size)
    logprob = torch.log_softmax(model.logits, -1)
    logprob[tok.index['a']], logprob[tok.index['b']], logprob[tok.index['c']], logprob[tok.index[' ']] = -4, -4, -1, -1
    model.logits = logprob  # log_softmax of log-probabilities that sum to less than one changes nothing we compare
    lls = [sum(float(torch.log_softmax(model.logits, -1)[t]) for t in tok.encode(c)) for c in (' ab', ' cccccccccc')]
    assert lls[0] > lls[1] and lls[0] / 2 < lls[1] / 10  # the crafted case: acc and acc_norm must disagree
    totals, details = downstream.evaluate_task(model, tok, 'arc_easy', [item], 64, 'cpu', nullcontext(), details=True)
    assert details[0]['loglikelihoods'] == pytest.approx(lls, abs=1e-5)
    assert details[0]['pred'] == 0 and details[0]['pred_norm'] == 1
    metrics = downstream.finish('arc_easy', totals)
    assert metrics['acc'] == 1.0 and metrics['acc_norm'] == 0.0 and metrics['n'] == 1
    # the token-mean normalisation: by tokens (3 and 11 with the space), not characters (2 and 10)
    assert metrics['acc_token_norm'] == (0.0 if lls[0] / 3 < lls[1] / 11 else 1.0)


def test_encoding_moves_trailing_spaces_and_long_contexts_keep_their_end():
    tok = char_tokenizer(['abc de'])
    context, continuation = downstream.encode_pair(tok, 'abc ', 'de')
    assert tok.decode(context) == 'abc' and tok.decode(continuation) == ' de'
    model = UnigramModel(tok.vocab_size, block_size=4)
    long = downstream.score(model, [(tok.encode('abcabcabc'), tok.encode('de'))], 4, 'cpu', nullcontext())
    short = downstream.score(model, [(tok.encode('abc'), tok.encode('de'))], 4, 'cpu', nullcontext())
    assert long[0][0] == pytest.approx(short[0][0])  # the model only sees the last block_size tokens


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny model trained on text that holds every character of the synthetic items, and the items on disk."""
    root = tmp_path_factory.mktemp('eval')
    text = (PROMPTS + ' ') * 30
    data = make_char_dataset(root / 'data', text=text)
    train(data, root / 'run', '--max_iters=20', '--eval_interval=20', '--block_size=64')
    evals = root / 'evals'
    evals.mkdir()
    for task, items in ITEMS.items():
        many = [items[0]] * 7  # several items so batches and ranks have something to share
        (evals / f'{task}.jsonl').write_text(''.join(json.dumps(i) + '\n' for i in many))
    return root, data, evals


def test_batched_scoring_equals_one_item_at_a_time(trained):
    import checkpoint as ckpt_files
    from model import GPT, GPTConfig
    root, data, evals = trained
    ckpt = ckpt_files.load(str(root / 'run' / 'ckpt_20.pt'))
    model = GPT(GPTConfig(**ckpt['model_args'])).eval()
    model.load_state_dict(ckpt['model'])
    tok = Tokenizer(ckpt['meta']['tokenizer'])
    pairs = [downstream.encode_pair(tok, c, k) for task, items in ITEMS.items()
             for c, k in downstream.requests_of(task, items[0])[0]]
    together = downstream.score(model, pairs, 64, 'cpu', nullcontext(), batch_tokens=4096)
    alone = [downstream.score(model, [p], 64, 'cpu', nullcontext())[0] for p in pairs]
    assert [g for _, g in together] == [g for _, g in alone]
    assert np.allclose([ll for ll, _ in together], [ll for ll, _ in alone], atol=1e-5)


TASK_RUN = ['--max_iters=2', '--eval_interval=2', '--block_size=64', '--gradient_accumulation_steps=2',
            '--eval_tasks=piqa,winogrande,lambada', '--eval_tasks_limit=5']


@pytest.fixture(scope='module')
def launched(trained):
    """eval.py in one process, then in one launch under 2 ranks: eval.py, and training with downstream tasks under
    DDP and FSDP (beside a one-process run of it)."""
    from helpers import torchrun_each, train_run
    root, data, evals = trained
    args = [f'--out_dir={root / "run"}', f'--evals_dir={evals}', f'--data_dir={data}', '--limit=5']
    r = run('eval.py', *args)
    assert r.returncode == 0, r.stderr
    single = json.load(open(root / 'run' / 'eval_20.json'))
    tasks = [*TASK_RUN, f'--eval_tasks_dir={evals}']
    train(data, root / 'tasks_single', *tasks)
    torchrun_each(root, [('eval.py', args), *(train_run(data, root / f'tasks_{mode}', *tasks,
                                                        f'--parallelism={mode}') for mode in ('ddp', 'fsdp'))])
    return root, single


def test_eval_py_writes_results_and_two_ranks_give_the_same_totals(launched):
    root, single = launched
    assert set(single) - {'_run'} == set(ITEMS) and single['hellaswag']['n'] == 5
    assert {'acc', 'acc_norm', 'acc_token_norm', 'acc_stderr', 'data_sha256', 'time_s'} <= set(single['piqa'])
    assert 'perplexity' in single['lambada'] and 'acc_norm' not in single['winogrande']
    double = json.load(open(root / 'run' / 'eval_20.json'))  # eval.py under 2 ranks wrote it again
    assert double['_run']['world_size'] == 2
    for task in ITEMS:  # 5 items: 3 on rank 0, 2 on rank 1, summed
        for key in ('n', 'acc', 'acc_norm', 'perplexity'):
            assert double[task].get(key) == pytest.approx(single[task].get(key), rel=1e-6)


def test_missing_data_and_tokenizers_that_cannot_are_one_line(trained, tmp_path):
    root, data, evals = trained
    r = run('eval.py', f'--out_dir={root / "run"}', f'--evals_dir={tmp_path}', f'--data_dir={data}', '--tasks=piqa')
    assert r.returncode == 2 and 'no data for piqa' in r.stderr and 'data/evals/prepare.py' in r.stderr
    (tmp_path / 'piqa.jsonl').write_text(json.dumps({'goal': 'Ωmega?', 'sol1': 'a', 'sol2': 'b', 'label': 0}) + '\n')
    r = run('eval.py', f'--out_dir={root / "run"}', f'--evals_dir={tmp_path}', f'--data_dir={data}', '--tasks=piqa')
    assert r.returncode == 2 and 'cannot encode task piqa' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run('eval.py', f'--out_dir={root / "run"}', '--tasks=mmlu')
    assert r.returncode == 2 and "task 'mmlu' is invalid" in r.stderr


def test_every_forward_honours_flash_attention_as_in_train_py(trained, tmp_path, monkeypatch):
    root, data, evals = trained
    args = [f'--ckpt={root / "run" / "ckpt_20.pt"}', f'--out_dir={tmp_path}', f'--evals_dir={evals}',
            f'--data_dir={data}', '--tasks=piqa,lambada', '--limit=2']
    flash_allowed, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def recording(*a, **k):
        flash_allowed.append(torch.backends.cuda.flash_sdp_enabled())
        return sdpa(*a, **k)
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention', recording)
    assert run('eval.py', *args, '--flash_attention=off').returncode == 0
    assert flash_allowed and not any(flash_allowed)
    r = run('eval.py', *args, '--flash_attention=require')
    assert r.returncode == 2 and r.stderr == "error: flash_attention='require' but FlashAttention cannot run here: " \
                                             "it needs CUDA\n"
    r = run('eval.py', *args, '--flash_attention=yes')
    assert r.returncode == 2 and 'allowed: auto, require, off' in r.stderr
    r = run('eval.py', *args, '--dtype=fp8')
    assert r.returncode == 2 and 'allowed: auto, float32, bfloat16, float16' in r.stderr


def test_eval_under_torchrun_with_an_item_only_rank_1_cannot_encode_fails_in_one_line(trained, tmp_path):
    # item 1 goes to rank 1: before, rank 1 exited silently (only rank 0 printed) while rank 0 waited for its sums
    import subprocess
    import sys
    from helpers import ROOT
    root, data, _ = trained
    ok, bad = ITEMS['piqa'][0], {**ITEMS['piqa'][0], 'goal': 'Ωmega?'}
    (tmp_path / 'piqa.jsonl').write_text(''.join(json.dumps(i) + '\n' for i in (ok, bad, ok, ok)))
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        os.path.join(ROOT, 'eval.py'), f'--out_dir={tmp_path / "o"}', f'--ckpt={root / "run" / "ckpt_20.pt"}',
                        f'--evals_dir={tmp_path}', f'--data_dir={data}', '--tasks=piqa'],
                       capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=120)
    ours = [line for line in r.stderr.splitlines() if line.startswith('error: ')]
    assert r.returncode != 0 and len(ours) == 1 and 'cannot encode task piqa' in ours[0], r.stderr[-2000:]


def test_downstream_accuracy_during_training(trained, tmp_path):
    root, data, evals = trained
    train(data, tmp_path / 'o', '--max_iters=4', '--eval_interval=2', '--block_size=64', '--eval_tasks=piqa,lambada',
          f'--eval_tasks_dir={evals}', '--eval_tasks_limit=3')
    evals_logged = run_logs(tmp_path / 'o')[0]['eval_steps']
    assert [e['iter'] for e in evals_logged] == [0, 2, 4]
    assert all(e['downstream']['piqa']['n'] == 3 and 'perplexity' in e['downstream']['lambada'] for e in evals_logged)
    rows = list(__import__('csv').DictReader(open(tmp_path / 'o' / 'metrics.csv')))
    assert [r['piqa_acc'] for r in rows if r['piqa_acc']] and any(r['val_loss'] for r in rows)
    r = run('bench/compare.py', str(tmp_path / 'o'), '--format', 'json')
    [row] = json.loads(r.stdout[r.stdout.index('['):r.stdout.rindex(']') + 1])
    assert row['piqa'] == evals_logged[-1]['downstream']['piqa']['acc_norm'] and row['lambada'] is not None


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, 'tiktoken_cache')), reason='no tiktoken cache')
def test_same_scores_as_lm_evaluation_harness(tmp_path):
    pytest.importorskip('lm_eval', reason='lm-eval is not installed (pip install lm-eval accelerate)')
    pytest.importorskip('transformers', reason='transformers is not installed')
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'))
    import convert
    import lm_eval_parity
    os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
    # a GPT-2 BPE model: the tokenizer travels with the export, as lm-eval needs
    source = tmp_path / 'text.txt'
    source.write_text((PROMPTS + '\n') * 20)
    r = run('data/shakespeare/prepare.py', f'--input={source}', f'--out_dir={tmp_path / "data"}')
    assert r.returncode == 0, r.stderr
    train(tmp_path / 'data', tmp_path / 'run', '--arch_preset=gpt2', '--max_iters=10', '--eval_interval=10',
          '--block_size=96', '--n_embd=32', '--n_head=2', '--n_layer=2')
    evals = tmp_path / 'evals'
    evals.mkdir()
    for task, items in ITEMS.items():
        (evals / f'{task}.jsonl').write_text(''.join(json.dumps(i) + '\n' for i in items * 3))
    convert.export(str(tmp_path / 'run' / 'ckpt_10.pt'), str(tmp_path / 'hf'))
    tasks = list(ITEMS)
    ours = lm_eval_parity.run_modgpt(str(tmp_path / 'run' / 'ckpt_10.pt'), tasks, None, str(evals))
    theirs = lm_eval_parity.run_lm_eval(str(tmp_path / 'hf'), tasks, None, str(evals), batch_size=4)
    for task, report in lm_eval_parity.compare(ours, theirs).items():
        assert report['same_requests'], task
        assert report['max_ll_difference'] < 1e-4, (task, report)
        assert report['acc_equal'] and report['acc_norm_equal'], (task, report)


@pytest.mark.parametrize('mode', ['ddp', 'fsdp'])
def test_downstream_in_training_under_torchrun_matches_one_process(launched, mode):
    root, _ = launched
    single, double = (run_logs(root / f'tasks_{d}')[0]['eval_steps'] for d in ('single', mode))
    for a, b in zip(single, double):  # items shared out (ddp) or all on every rank (fsdp): the same totals
        for task in ('piqa', 'winogrande', 'lambada'):
            assert a['downstream'][task]['n'] == b['downstream'][task]['n'] == 5
            for key in ('acc', 'acc_norm', 'perplexity'):
                assert a['downstream'][task].get(key) == pytest.approx(b['downstream'][task].get(key), rel=1e-5)

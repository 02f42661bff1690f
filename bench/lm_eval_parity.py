"""
eval.py against lm-evaluation-harness on the same items: per-item log-likelihoods, acc and acc_norm, and time.

    pip install lm-eval accelerate
    python bench/lm_eval_parity.py --out_dir=out-tinystories --tasks=hellaswag,arc_easy --limit=200

The checkpoint is exported to a Hugging Face folder (convert.py), lm-eval scores it through its `hf` model on
local copies of its own task configs that read data/evals/<task>.jsonl (so both see the same items), and
downstream.py scores the modgpt checkpoint. Reports the largest per-item log-likelihood difference, whether every
item's prediction agrees, both accuracies and both wall times.
"""
import argparse
import os
import sys
import tempfile
import time
from contextlib import nullcontext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import downstream  # noqa: E402

# lm-eval's own zero-shot task configs (lm_eval/tasks/*), pointed at local items
TEMPLATES = {
    'hellaswag': "process_docs: !function utils.hellaswag_process_docs\ndoc_to_text: '{{query}}'\n"
                 "doc_to_target: '{{label}}'\ndoc_to_choice: choices\n",
    'arc_easy': "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_target: '{{choices.label.index(answerKey)}}'\n"
                "doc_to_choice: '{{choices.text}}'\n",
    'piqa': "doc_to_text: \"Question: {{goal}}\\nAnswer:\"\ndoc_to_target: label\ndoc_to_choice: '{{[sol1, sol2]}}'\n",
    'winogrande': "doc_to_text: !function utils.winogrande_doc_to_text\ndoc_to_target: !function "
                  "utils.winogrande_doc_to_target\ndoc_to_choice: !function utils.winogrande_doc_to_choice\n",
    'lambada': "doc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\ndoc_to_target: \"{{' '+text.split(' ')[-1]}}\"\n",
}
TEMPLATES['arc_challenge'] = TEMPLATES['arc_easy']
UTILS = '''from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_process_docs
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_text as winogrande_doc_to_text
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_target as winogrande_doc_to_target
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice as winogrande_doc_to_choice
'''


def write_tasks(folder, tasks, evals_dir):
    """lm-eval task yamls named modgpt_<task> in folder, reading evals_dir/<task>.jsonl."""
    with open(os.path.join(folder, 'utils.py'), 'w') as f:
        f.write(UTILS)
    for task in tasks:
        kind = 'loglikelihood' if task == 'lambada' else 'multiple_choice'
        metrics = ['perplexity', 'acc'] if task == 'lambada' else ['acc'] if task == 'winogrande' else ['acc', 'acc_norm']
        metric_list = ''.join(f"  - metric: {m}\n    aggregation: {'perplexity' if m == 'perplexity' else 'mean'}\n"
                              f"    higher_is_better: {'false' if m == 'perplexity' else 'true'}\n" for m in metrics)
        with open(os.path.join(folder, f'modgpt_{task}.yaml'), 'w') as f:
            f.write(f"task: modgpt_{task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                    f"    validation: {os.path.join(os.path.abspath(evals_dir), task + '.jsonl')}\n"
                    f"output_type: {kind}\nvalidation_split: validation\n{TEMPLATES[task]}"
                    f"metric_list:\n{metric_list}metadata:\n  version: 1.0\n")


def run_lm_eval(hf_dir, tasks, limit, evals_dir, batch_size=16):
    """{task: (metrics, [per-item log-likelihood lists])} from lm-eval's hf model on the local task copies."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    with tempfile.TemporaryDirectory() as folder:
        write_tasks(folder, tasks, evals_dir)
        out = lm_eval.simple_evaluate(model='hf', model_args=f'pretrained={hf_dir},dtype=float32',
                                      tasks=[f'modgpt_{t}' for t in tasks], limit=limit, batch_size=batch_size,
                                      device='cpu', log_samples=True, task_manager=TaskManager(include_path=folder),
                                      # no bootstrapped stderrs: not compared, slow, and its fork pool can
                                      # deadlock in a process that already runs threads
                                      bootstrap_iters=0)
    found = {}
    for task in tasks:
        samples = sorted(out['samples'][f'modgpt_{task}'], key=lambda s: s['doc_id'])
        found[task] = (out['results'][f'modgpt_{task}'], [[float(r[0]) for r in s['filtered_resps']] for s in samples])
    return found


def run_modgpt(checkpoint_path, tasks, limit, evals_dir):
    """{task: (metrics, [per-item log-likelihood lists])} from downstream.py on the modgpt checkpoint."""
    import checkpoint as ckpt_files
    from model import GPT, GPTConfig
    from tokenizer import Tokenizer
    ckpt = ckpt_files.load(checkpoint_path)
    model = GPT(GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    model.eval()
    tokenizer = Tokenizer(ckpt['meta']['tokenizer'], ckpt['config'].get('data_dir') or '.')
    found = {}
    for task in tasks:
        items, _ = downstream.load_items(task, evals_dir, limit)
        totals, per_item = downstream.evaluate_task(model, tokenizer, task, items, model.config.block_size, 'cpu',
                                                    nullcontext(), details=True)
        lls = [[p['loglikelihood']] if task == 'lambada' else p['loglikelihoods'] for p in per_item]
        found[task] = (downstream.finish(task, totals), lls)
    return found


def compare(ours, theirs):
    """{task: (largest |difference| of a log-likelihood, acc equal, acc_norm equal)}."""
    report = {}
    for task, (metrics, lls) in ours.items():
        their_metrics, their_lls = theirs[task]
        worst = max(abs(a - b) for mine, other in zip(lls, their_lls) for a, b in zip(mine, other))
        relative = max(abs(a - b) / max(1.0, abs(b)) for mine, other in zip(lls, their_lls) for a, b in zip(mine, other))
        same = all(len(a) == len(b) for a, b in zip(lls, their_lls)) and len(lls) == len(their_lls)
        acc_equal = abs(metrics['acc'] - their_metrics['acc,none']) < 1e-12
        norm_equal = 'acc_norm' not in metrics or abs(metrics['acc_norm'] - their_metrics['acc_norm,none']) < 1e-12
        report[task] = {'max_ll_difference': worst, 'max_relative_difference': relative, 'same_requests': same, 'acc': metrics['acc'],
                        'lm_eval_acc': their_metrics['acc,none'], 'acc_equal': acc_equal, 'acc_norm_equal': norm_equal,
                        'acc_norm': metrics.get('acc_norm'), 'lm_eval_acc_norm': their_metrics.get('acc_norm,none')}
    return report


def main():
    import convert
    import checkpoint as ckpt_files
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out_dir', required=True, help='a run of train.py on a GPT-2 BPE dataset')
    parser.add_argument('--tasks', default='hellaswag,arc_easy')
    parser.add_argument('--limit', type=int, default=200)
    parser.add_argument('--evals_dir', default=downstream.DATA_DIR)
    args = parser.parse_args()
    tasks = args.tasks.split(',')
    path = ckpt_files.list_checkpoints(args.out_dir)[0]
    with tempfile.TemporaryDirectory() as hf_dir:
        convert.export(path, hf_dir)
        start = time.time()
        ours = run_modgpt(path, tasks, args.limit, args.evals_dir)
        ours_s = time.time() - start
        start = time.time()
        theirs = run_lm_eval(hf_dir, tasks, args.limit, args.evals_dir)
        theirs_s = time.time() - start
    print('| task | items | acc (modgpt / lm-eval) | acc_norm (modgpt / lm-eval) | largest log-likelihood difference '
          '(absolute, relative) |')
    print('|---|---|---|---|---|')
    for task, r in compare(ours, theirs).items():
        norm = f"{r['acc_norm']:.4f} / {r['lm_eval_acc_norm']:.4f}" if r['acc_norm'] is not None else '-'
        print(f"| {task} | {args.limit} | {r['acc']:.4f} / {r['lm_eval_acc']:.4f} | {norm} | "
              f"{r['max_ll_difference']:.1e}, {r['max_relative_difference']:.1e} |")
    print(f"\n{path}: downstream.py {ours_s:.1f} s, lm-eval {theirs_s:.1f} s (both on CPU, fp32, model load included)")


if __name__ == '__main__':
    main()

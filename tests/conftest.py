import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# offline GPT-2 BPE: use the shared tiktoken cache when it sits beside the checkout
_cache = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'tiktoken_cache')
if os.path.isdir(_cache):
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', _cache)

# measured CPU peaks are cached per machine: tests keep theirs in a folder of their own
os.environ.setdefault('MODGPT_CACHE_DIR', tempfile.mkdtemp(prefix='modgpt-test-cache-'))

# one thread per process: the tests' models are tiny, and on a 2-core machine that runs anything else two OpenMP
# threads spin-wait on each other for every small op (the float64 gradchecks ran 3-10x slower, their CPU time 4x).
# torchrun ranks already run one each; subprocesses inherit this, so the CPU peak is measured once, for one key.
# bench/ablate.py sets its jobs' threads itself (that test compares 1 against 2 threads); an explicit
# OMP_NUM_THREADS wins.
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch  # noqa: E402

if os.environ['OMP_NUM_THREADS'].isdigit():  # in case a plugin imported torch before this file
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

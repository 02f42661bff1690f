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

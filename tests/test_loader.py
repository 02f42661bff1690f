"""loader.py's random sampler: every valid window start can be drawn."""
import numpy as np

import loader
from helpers import make_char_dataset


def test_random_windows_reach_the_last_token_of_a_split(tmp_path):
    # 'abcdefghij' repeated: a train split of 18 tokens; block 16 leaves exactly two windows of 17 tokens,
    # starting at 0 and 1. The second holds the split's last token as its last target (once never drawn).
    data = make_char_dataset(tmp_path, text='abcdefghij' * 2)
    data_dir, meta, streams = loader.open_dataset('', data)
    assert streams['train'].total == 18
    batches = loader.Batches(streams, meta, 16, 4, 1, 1337, 'random', 'cpu')
    last = int(np.memmap(streams['train'].paths[0], dtype=streams['train'].dtype, mode='r')[-1])
    starts = set()
    for iteration in range(8):
        x, y, _, _ = batches.train(iteration, 0)
        assert x.shape == y.shape == (4, 16)
        starts |= {0 if row[-1] != last else 1 for row in y.tolist()}
    assert starts == {0, 1}

"""Checkpoint files: atomic writes, rotation order, and finding the newest one that loads."""
import glob
import os
import re
import sys

import torch


def atomic_write(path, write):
    """write(f) into a temp file, fsync, then rename over path: a crash leaves the old file or the new one."""
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def list_checkpoints(directory):
    """ckpt_<iter>.pt files in directory, newest (highest iteration) first."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(directory, 'ckpt_*.pt'))
             if (m := re.fullmatch(r'ckpt_(\d+)\.pt', os.path.basename(p)))]
    return [p for _, p in sorted(found, reverse=True)]


def load_newest(paths):
    """(checkpoint, path) of the first of paths that loads; unreadable ones (truncated by a crash) are skipped."""
    for path in paths:
        try:
            return load(path), path
        except Exception as e:
            print(f"warning: skipping unreadable checkpoint {path} ({type(e).__name__})", file=sys.stderr)
    return None, None

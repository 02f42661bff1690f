"""
Atomic file writes: a reader, or the next run after a crash (kill -9 included), finds the old file or the new
one, never half of one. Imports nothing heavy, so the data scripts can use it without torch.
"""
import json
import os


def atomic_write(path, write, mode='wb'):
    """write(f) into a temp file beside path (opened with mode: 'wb', or 'w' for UTF-8 text), fsync, then rename
    it over path. On any failure the temp file is removed and path is left as it was."""
    # the pid keeps apart writers of one path: a worker orphaned by a killed run, the rerun that replaced it
    # (data/corpus.py's DATASET_FILE knows this name)
    tmp = f'{path}.{os.getpid()}.tmp'
    try:
        with open(tmp, mode, encoding=None if 'b' in mode else 'utf-8') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.isfile(tmp):
            os.remove(tmp)  # a full disk keeps no half-written file
        raise


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text), mode='w')


def write_json(path, obj, indent=1):
    atomic_write(path, lambda f: json.dump(obj, f, indent=indent), mode='w')

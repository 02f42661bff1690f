import json
import os
import signal
import subprocess
import sys
import time

import pytest

import files
from helpers import ROOT

# writes 8 MiB through files.atomic_write, says it is halfway (the file ARGV[2] appears), then waits to be killed
WRITER = f"""
import os, sys, time
sys.path.insert(0, {ROOT!r})
from files import atomic_write

def write(f):
    f.write(b'new' * (1 << 22))
    f.flush()
    open(sys.argv[2], 'w').close()
    time.sleep(60)
    f.write(b'new' * (1 << 22))
atomic_write(sys.argv[1], write)
"""


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    path, ready = tmp_path / 'state.json', tmp_path / 'ready'
    path.write_text('old')
    writer = subprocess.Popen([sys.executable, '-c', WRITER, str(path), str(ready)])
    try:
        deadline = time.time() + 30
        while not ready.exists():
            assert writer.poll() is None and time.time() < deadline, 'the writer never got halfway'
            time.sleep(0.01)
        tmp = tmp_path / f'state.json.{writer.pid}.tmp'
        assert tmp.stat().st_size == 3 << 22 and path.read_text() == 'old'  # halfway, beside the real name
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert path.read_text() == 'old'
    # what the killed writer left is only under its temp name, never under the real one
    assert sorted(os.listdir(tmp_path)) == sorted(['state.json', tmp.name, 'ready'])
    files.write_json(str(path), {'new': 1})
    assert json.loads(path.read_text()) == {'new': 1}


def test_a_write_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / 'tokens.bin'
    path.write_bytes(b'old')

    def fail_halfway(f):
        f.write(b'new' * 1000)
        raise OSError(28, 'No space left on device')
    with pytest.raises(OSError, match='No space left'):
        files.atomic_write(str(path), fail_halfway)
    assert path.read_bytes() == b'old' and os.listdir(tmp_path) == ['tokens.bin']
    files.write_text(str(path), 'Ωmega\n')  # text is UTF-8 whatever the locale
    assert path.read_bytes() == 'Ωmega\n'.encode('utf-8') and os.listdir(tmp_path) == ['tokens.bin']


def test_temp_files_of_killed_checkpoint_writers_are_removed_at_start_up(tmp_path):
    import checkpoint
    import subprocess
    import sys
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    dead = int(gone.stdout)  # a pid that no longer runs
    live = os.getpid()  # a writer still at work (another run in this out_dir): its file stays
    for name in ('ckpt_4.pt', f'ckpt_8.pt.{dead}.tmp', f'best.pt.{dead}.tmp', f'ckpt_12.pt.{live}.tmp',
                 f'notes.txt.{dead}.tmp'):
        (tmp_path / name).write_text('x')
    checkpoint.recover_interrupted_swap(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['ckpt_4.pt', f'ckpt_12.pt.{live}.tmp',
                                                                 f'notes.txt.{dead}.tmp'])

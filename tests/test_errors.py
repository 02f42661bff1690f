import subprocess
import sys

import pytest

import errors
from helpers import ROOT


def die_on_rank(monkeypatch, rank, **kwargs):
    """(exit status, the sleeps it took) of errors.die('bad', ...) on this rank of a launch."""
    monkeypatch.setenv('RANK', str(rank))
    slept = []
    monkeypatch.setattr(errors.time, 'sleep', slept.append)
    with pytest.raises(SystemExit) as e:
        errors.die('bad', **kwargs)
    return e.value.code, slept


def test_rank_0_says_a_verdict_every_rank_reaches_and_the_others_let_it(monkeypatch, capsys):
    import torch.distributed  # noqa: F401  (a process of a torchrun launch, its group not yet set up)
    assert die_on_rank(monkeypatch, 0) == (2, []) and capsys.readouterr().err == 'error: bad\n'
    assert die_on_rank(monkeypatch, 1) == (2, [3]) and capsys.readouterr().err == ''
    # a verdict only this rank met: it says so itself, naming its rank
    assert die_on_rank(monkeypatch, 1, status=1, every_rank_alike=False) == (1, [])
    assert capsys.readouterr().err == 'error: rank 1: bad\n'


def test_a_script_without_torch_always_says_why(monkeypatch, capsys):
    # a data script started with RANK in its environment (by a rank of a launch) is no rank itself
    monkeypatch.delitem(sys.modules, 'torch.distributed', raising=False)
    assert die_on_rank(monkeypatch, 1) == (2, []) and capsys.readouterr().err == 'error: bad\n'


def test_the_shared_modules_do_not_import_torch():
    code = "import sys, errors, files; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, '-c', code], cwd=ROOT).returncode == 0

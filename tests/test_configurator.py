import ast
import os
import runpy
import subprocess
import sys
import textwrap

import pytest

from configurator import ConfigError, apply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def defaults():
    return {'batch_size': 12, 'learning_rate': 6e-4, 'compile': True, 'dataset': 'shakespeare_char',
            'n_kv_head': None, 'betas': (0.9, 0.95)}


def test_overrides_are_typed():
    cfg = apply(defaults(), ['--batch_size=32', '--learning_rate=1', '--compile=false', '--dataset=tinystories',
                             '--n_kv_head=4', '--betas=(0.8, 0.9)'], types={'n_kv_head': int})
    assert cfg == {'batch_size': 32, 'learning_rate': 1.0, 'compile': False, 'dataset': 'tinystories',
                   'n_kv_head': 4, 'betas': (0.8, 0.9)}
    assert isinstance(cfg['learning_rate'], float)
    assert apply(defaults(), ['--compile=True'])['compile'] is True
    assert apply(defaults(), ['--n_kv_head=None'], types={'n_kv_head': int})['n_kv_head'] is None


@pytest.mark.parametrize('arg,match', [
    ('--batch_sise=3', "did you mean 'batch_size'"),
    ('--batch_size=3.5', 'expected int'),
    ('--batch_size=abc', 'expected int'),
    ('--compile=yes', 'expected True or False'),
    ('--learning_rate=fast', 'expected float'),
    ('--batch_size', 'expected --key=value'),
    ('--batch_size=True', 'expected int'),
    ('--n_kv_head=two', 'expected int'),
    ('no_such_file.py', 'config file not found: no_such_file.py'),
])
def test_bad_overrides(arg, match):
    with pytest.raises(ConfigError, match=match):
        apply(defaults(), [arg], types={'n_kv_head': int})


def test_config_file_then_override_in_order(tmp_path):
    f = tmp_path / 'c.py'
    f.write_text('import math\nbatch_size = 64\nlearning_rate = 3e-4 * math.sqrt(4)\n_helper = 1\n')
    cfg = apply(defaults(), [str(f), '--batch_size=8'])
    assert cfg['batch_size'] == 8 and cfg['learning_rate'] == pytest.approx(6e-4)
    assert '_helper' not in cfg and 'math' not in cfg


def test_config_file_may_not_introduce_names(tmp_path):
    f = tmp_path / 'c.py'
    f.write_text('batch_sizes = 64\n')
    with pytest.raises(ConfigError, match="unknown config key 'batch_sizes'; did you mean 'batch_size'"):
        apply(defaults(), [str(f)])


def test_errors_exit_2_with_one_line(tmp_path):
    script = tmp_path / 'script.py'
    script.write_text(textwrap.dedent(f'''
        import sys; sys.path.insert(0, {ROOT!r})
        from configurator import configure
        batch_size = 12
        configure(globals())
        print('batch_size', batch_size)
    '''))
    ok = subprocess.run([sys.executable, str(script), '--batch_size=5'], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == 'batch_size 5'
    for argv in (['--nope=1'], ['missing.py'], ['--batch_size=x']):
        bad = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True)
        assert bad.returncode == 2
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in bad.stderr


def train_config_keys():
    """The names train.py's configure() accepts: its top-level simple assignments plus the GPTConfig fields."""
    import ast
    from model import GPTConfig
    tree = ast.parse(open(os.path.join(ROOT, 'train.py')).read())
    keys = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name) and isinstance(node.value, ast.Constant)}
    return keys | set(GPTConfig.__dataclass_fields__)


@pytest.mark.parametrize('name', sorted(os.listdir(os.path.join(ROOT, 'config'))))
def test_every_config_file_uses_known_keys(name):
    keys = train_config_keys()
    assert {'max_iters', 'learning_rate', 'arch_preset', 'n_layer', 'parallelism'} <= keys
    scope = {}
    exec(open(os.path.join(ROOT, 'config', name)).read(), scope)
    unknown = {k for k in scope if not k.startswith('_')} - keys
    assert not unknown, f'{name} sets unknown keys {unknown}'


def test_train_py_names_every_architecture_field():
    # a newcomer finds each switch in train.py with one search: every GPTConfig field is a global there
    from model import GPTConfig
    tree = ast.parse(open(os.path.join(ROOT, 'train.py')).read())
    named = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    assert set(GPTConfig.__dataclass_fields__) <= named


@pytest.mark.parametrize('name', ['arch_gpt2.py', 'arch_llama.py', 'arch_team.py', 'arch_custom.py'])
def test_quick_start_architecture_configs_train(name, tmp_path):
    from helpers import make_char_dataset, run, run_logs
    from model import GPTConfig
    path = os.path.join(ROOT, 'config', name)
    settings = runpy.run_path(path)
    assert len(open(path).read().splitlines()) <= 12  # a few lines each
    data = make_char_dataset(tmp_path / 'data')
    r = run('train.py', path, f'--data_dir={data}', f'--out_dir={tmp_path / "o"}', '--max_iters=2', '--eval_iters=1',
            '--compile=False', '--device=cpu')
    assert r.returncode == 0, r.stdout + r.stderr
    log = run_logs(tmp_path / 'o')[0]
    expected = GPTConfig.from_preset(settings['arch_preset'], vocab_size=log['config']['vocab_size'],
                                     **{k: v for k, v in settings.items() if k in GPTConfig.__dataclass_fields__})
    assert log['startup_info']['architecture'] == expected.architecture_name()
    assert log['config']['block_size'] == settings['block_size'] == 64  # the config the run logs is the model's


def test_aliases_of_other_trainers_in_files_and_on_the_command_line(tmp_path):
    aliases = {'use_fsdp': ('parallelism', 'fsdp'), 'use_zero1': ('parallelism', 'zero1')}
    files = {'a.py': 'use_fsdp = True\n', 'b.py': 'batch_size = 5\n', 'c.py': "parallelism = 'ddp'\n",
             'd.py': "if True:\n    use_zero1 = True\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    def parallelism(*argv):
        return apply({'parallelism': 'ddp', 'batch_size': 12}, [str(tmp_path / a) if a.endswith('.py') else a
                                                                for a in argv], aliases=aliases)['parallelism']
    assert parallelism('--use_fsdp=True') == 'fsdp' and parallelism('a.py') == 'fsdp' and parallelism('d.py') == 'zero1'
    assert parallelism('a.py', '--use_fsdp=False') == 'ddp'  # a later False undoes the file's True
    assert parallelism('--use_zero1=False') == 'ddp' and parallelism('a.py', 'b.py') == 'fsdp'
    assert parallelism('--use_fsdp=True', '--parallelism=fsdp') == 'fsdp'  # agreeing is no conflict
    for argv, blamed in [(('c.py', '--use_fsdp=True'), 'c.py'), (('a.py', 'b.py', '--parallelism=zero1'), 'a.py'),
                         (('--use_fsdp=True', 'b.py', '--use_zero1=True'), '--use_fsdp=True'),
                         (('--parallelism=zero1', 'a.py'), '--parallelism=zero1')]:
        with pytest.raises(ConfigError, match='conflicts with') as e:
            parallelism(*argv)
        assert blamed in str(e.value).split('conflicts with')[1], (argv, str(e.value))


def test_model_py_lists_the_presets():
    from model import PRESETS
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'model.py'), '--presets'], capture_output=True, text=True)
    assert r.returncode == 0 and [line.split()[0] for line in r.stdout.splitlines()[::2]] == list(PRESETS)
    assert '124.5M parameters' in r.stdout and "n_expert=8" in r.stdout
    bad = subprocess.run([sys.executable, os.path.join(ROOT, 'model.py')], capture_output=True, text=True)
    assert bad.returncode == 2 and 'usage:' in bad.stderr

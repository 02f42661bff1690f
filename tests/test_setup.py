"""Two commands set it up: the README's install command installs everything the README's test command needs,
and CI (.ci/run) runs those two commands, so CI cannot pass where a user's first try fails."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIP_NAMES = {'lm_eval': 'lm-eval', 'tokenizers': 'transformers'}  # module -> the requirement that brings it


def read(path):
    return open(os.path.join(ROOT, path)).read()


def requirements(path):
    names = set()
    for line in read(path).splitlines():
        line = line.split('#')[0].strip()
        if line.startswith('-r '):
            names |= requirements(line[3:].strip())
        elif line:
            names.add(re.split(r'[<>=\[ ]', line)[0])
    return names


def code_block(section):
    text = read('README.md')
    body = text[text.index(f'\n## {section}\n'):]
    block = body[body.index('```bash\n') + 8:]
    return [line.split('#')[0].strip() for line in block[:block.index('```')].splitlines() if line.split('#')[0].strip()]


def test_the_install_command_brings_every_module_a_test_would_skip_without():
    wanted = set()
    for path in glob.glob(os.path.join(ROOT, 'tests', '*.py')):
        wanted |= set(re.findall(r"importorskip\('([\w.]+)'", open(path).read()))
    installed = requirements('requirements-dev.txt')
    assert {'pytest', 'torch'} <= installed
    missing = {PIP_NAMES.get(m, m) for m in (name.split('.')[0] for name in wanted)} - installed
    assert not missing, f"requirements-dev.txt lacks {missing}"


def test_ci_runs_the_readme_commands():
    install, test = code_block('Install'), code_block('Tests')
    assert install[0] == 'pip install -r requirements-dev.txt' and test == ['python -m pytest -q tests']
    ci = [line.strip() for line in read('.ci/run').splitlines() if line.strip() and not line.startswith('#')]
    pips = [line for line in ci if ' pip install ' in line]
    assert len(pips) == 2 and 'torch==2.13.0' in pips[0]  # the CPU wheel pin, which a GPU user does not need
    assert pips[1].split('#')[0].split()[-2:] == ['-r', 'requirements-dev.txt']
    assert ci[-1] == 'python3 -m pytest -q tests'

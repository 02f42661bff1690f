"""
Config overrides, nanoGPT style:  python train.py config/some_config.py --batch_size=32 --compile=False

Config files are plain Python run with exec: they are trusted code, like train.py itself.
Each file may only assign names the script already has; each --key=value must name an existing
key and is checked against the type of its default. Any mistake prints one line and exits with 2.
"""
import ast
import difflib
import os
import sys

from errors import die


class ConfigError(Exception):
    pass


def _suggest(key, known):
    hint = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ''


def parse_value(key, text, default, types):
    """Convert the command-line text for `key` to the type of its default (or of types[key])."""
    kind = types.get(key, type(default) if default is not None else None)
    if kind is bool:
        if text in ('True', 'true'):
            return True
        if text in ('False', 'false'):
            return False
        raise ConfigError(f"--{key}={text}: expected True or False")
    if kind is str:
        return text  # strings need no quotes
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if kind is None:
            return text  # an untyped key (default None) takes a bare word as a string
        raise ConfigError(f"--{key}={text}: expected {kind.__name__}")
    if text in ('None',) and default is None:
        return None
    if kind is None:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"--{key}={text}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def assigned_names(code):
    """The names a config file assigns (a, b = 1, 2 and assignments under if/for included), in order."""
    names, todo = [], [ast.parse(code)]
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue  # their names are local, not settings
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.append(node.id)
        todo.extend(ast.iter_child_nodes(node))
    return list(dict.fromkeys(names))


def apply(config, argv, types=None, aliases=None):
    """Apply config files and --key=value overrides in argv to the dict `config` (in order). aliases maps boolean
    settings of other tools (use_fsdp) to the (key, value) they stand for here (parallelism='fsdp'): True sets it,
    a later False undoes it (and does nothing otherwise), and a different value of that key set before or after
    it is an error."""
    types, aliases = types or {}, aliases or {}
    known = [k for k in config]
    set_by = {}  # key -> (what set it, the alias that did or None, the value before the alias)

    def assign(key, value, source):
        alias = key if key in aliases else None
        if alias:
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: expected True or False")
            key, target = aliases[alias]
            if not value:  # False undoes this alias's own True, and does nothing otherwise
                if key in set_by and set_by[key][1] == alias:
                    config[key] = set_by.pop(key)[2]
                return
            value = target
        if key in set_by and config[key] != value and (alias or set_by[key][1]):
            raise ConfigError(f"{source} conflicts with {set_by[key][0]}")
        set_by[key] = (source, alias, set_by[key][2] if key in set_by else config[key])
        config[key] = value

    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                raise ConfigError(f"config file not found: {arg}")
            scope = dict(config)
            with open(arg) as f:
                code = f.read()
            try:
                assigned = assigned_names(code)
                exec(compile(code, arg, 'exec'), scope)
            except Exception as e:
                raise ConfigError(f"{arg}: {type(e).__name__}: {e}")
            for key in assigned:  # only what the file sets: its copy of every other key is not a setting
                value = scope.get(key, scope)
                if key.startswith('_') or value is scope or type(value).__name__ in ('module', 'function', 'type'):
                    continue
                if key not in config and key not in aliases:
                    raise ConfigError(f"{arg}: unknown config key {key!r}{_suggest(key, known)}")
                assign(key, value, f"{key}={value!r} ({arg})")
        else:
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise ConfigError(f"{arg}: expected --key=value")
            if key in aliases:
                assign(key, parse_value(key, text, False, types), f"--{key}={text}")
                continue
            if key not in config:
                raise ConfigError(f"unknown config key {key!r}{_suggest(key, known)}")
            assign(key, parse_value(key, text, config[key], types), f"--{key}={text}")
    return config


def configure(scope, argv=None, types=None, aliases=None):
    """Override the config globals of a script in place: configure(globals()).
    Only simple values (int, float, bool, str, None, tuple, list) defined before the call are config keys."""
    argv = sys.argv[1:] if argv is None else argv
    keys = {k: v for k, v in scope.items()
            if not k.startswith('_') and isinstance(v, (int, float, bool, str, tuple, list, type(None)))}
    try:
        apply(keys, argv, types, aliases)
    except ConfigError as e:
        die(str(e))
    scope.update(keys)
    return keys

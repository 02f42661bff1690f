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


def apply(config, argv, types=None, aliases=None):
    """Apply config files and --key=value overrides in argv to the dict `config` (in order). aliases maps boolean
    settings of other tools (use_fsdp) to the (key, value) they stand for here (parallelism='fsdp'): True sets it,
    False does nothing, and a different value of that key set anywhere else is an error."""
    types, aliases = types or {}, aliases or {}
    known = [k for k in config]
    set_by = {}  # key -> (what set it, value, whether an alias did), for the conflicts of aliases

    def assign(key, value, source):
        alias = key in aliases
        if alias:
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: expected True or False")
            if not value:
                return
            key, value = aliases[key]
        if key in set_by and set_by[key][1] != value and (alias or set_by[key][2]):
            raise ConfigError(f"{source} conflicts with {set_by[key][0]}")
        set_by[key] = (source, value, alias)
        config[key] = value

    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                raise ConfigError(f"config file not found: {arg}")
            scope = dict(config)
            with open(arg) as f:
                code = f.read()
            try:
                exec(compile(code, arg, 'exec'), scope)
            except Exception as e:
                raise ConfigError(f"{arg}: {type(e).__name__}: {e}")
            for key, value in scope.items():
                if key.startswith('_') or type(value).__name__ in ('module', 'function', 'type'):
                    continue
                if key not in config and key not in aliases:
                    raise ConfigError(f"{arg}: unknown config key {key!r}{_suggest(key, known)}")
                if key in aliases or value != config[key] or key in set_by:
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

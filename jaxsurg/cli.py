"""What the command line shows a newcomer: the packaged configs and their variants
(``--help``), a config found by name from any folder (``--config=laparoflow``), and a
resolved config printed with a one-line description of every key (``--show``).

Descriptions are the ``# comments`` beside each key where the config is written (the
method's config file, its method package's ``config`` module, ``jaxsurg.config``): one
text per key, kept where the key is set.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import tokenize
from typing import Any

import ml_collections

from jaxsurg import config as config_lib

# config.method → the package whose ``run(config, workdir, policy)`` trains it and whose
# ``trained_model(config, workdir, summary)`` loads the finished network (jaxsurg.predict).
METHODS = {
    "unet11": "jaxsurg.methods.unet11",
    "laparoflow": "jaxsurg.methods.laparoflow",
    "dual_motion": "jaxsurg.methods.dual_motion",
    "agsd": "jaxsurg.methods.agsd",
    "pat": "jaxsurg.methods.pat",
}

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def config_names() -> list[str]:
    """The names of the packaged configs (``jaxsurg/configs/<name>.py``)."""
    return sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_"))


def config_path(spec: str) -> str:
    """The file of ``--config=spec`` (``spec`` without its ``:arg``): a path as given when it
    exists, else a packaged config by name (``laparoflow``, ``laparoflow.py`` or
    ``configs/laparoflow.py`` from any folder).

    Raises:
      FileNotFoundError: neither a file nor a packaged config name; the message lists the names.
    """
    if os.path.isfile(spec):
        return spec
    name = os.path.basename(spec)
    name = name[:-3] if name.endswith(".py") else name
    if name in config_names():
        return os.path.join(CONFIG_DIR, f"{name}.py")
    raise FileNotFoundError(f"--config={spec!r}: no such file and no packaged config of that name; packaged: {', '.join(config_names())}")


def load_module(spec: str):
    """The config module of ``--config=spec[:arg]``."""
    path = config_path(spec.partition(":")[0])
    module_spec = importlib.util.spec_from_file_location(f"jaxsurg_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config of ``--config=path_or_name[:arg]`` (its ``get_config(arg)``)."""
    _, _, arg = spec.partition(":")
    return load_module(spec).get_config(arg or None)


def help_text() -> str:
    """The list of packaged configs with their first docstring line and variants."""
    lines = ["Configs (--config=NAME[:variant=V,key=value] or a path to a config file):"]
    for name in config_names():
        module = load_module(name)
        doc = (module.__doc__ or "").strip().splitlines()
        variants = ", ".join(getattr(module, "VARIANTS", {}))
        lines.append(f"  {name:<12} {doc[0] if doc else ''}")
        lines.append(f"  {'':<12} variants: {variants}   e.g. --config={name}:variant=tiny")
    lines += [
        "",
        "  --config=NAME --show            print the resolved config, a line per key, and exit",
        "  --workdir=DIR                   the run's folder (config.json, checkpoints, eval/)",
        "  --config.KEY=VALUE              override one key (see --show for the keys)",
        "  --overwrite / --resume          what to do with a workdir made by another config",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- descriptions


def _comments(path: str) -> dict[str, str]:
    """``dotted key → comment`` for the keys assigned in ``path`` with a trailing comment:
    ``c.a.b = v  # text`` gives ``a.b``; ``k=v,  # text`` inside the call assigned to
    ``c.a`` gives ``a.k``; the keys of a dict assigned to a module-level NAME are given as
    ``NAME.k``."""
    with open(path, encoding="utf-8") as f:
        tokens = list(tokenize.generate_tokens(io.StringIO(f.read()).readline))
    out: dict[str, str] = {}
    depth, blocks = 0, [(0, "")]  # (paren depth the block's keys sit at, its dotted prefix)
    pending: str | None = None  # the key of the current line awaiting its comment
    line_key: tuple[int, str] | None = None
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
            if pending is not None:
                blocks.append((depth, pending))
                pending = None
        elif tok.type == tokenize.OP and tok.string in ")]}":
            while len(blocks) > 1 and blocks[-1][0] >= depth:
                blocks.pop()
            depth -= 1
        elif tok.type == tokenize.NAME and i + 1 < len(tokens) and tokens[i + 1].string == "=":
            # an assignment target: c.x.y = or NAME = at depth 0, k= inside a call
            j, parts = i, [tok.string]
            while j >= 2 and tokens[j - 1].string == "." and tokens[j - 2].type == tokenize.NAME:
                parts.insert(0, tokens[j - 2].string)
                j -= 2
            if depth == 0:
                key = ".".join(parts[1:]) if parts[0] == "c" and len(parts) > 1 else ".".join(parts)
            else:
                prefix = blocks[-1][1]
                key = f"{prefix}.{tok.string}" if prefix else tok.string
            pending = key
            if line_key is None or line_key[0] != tok.start[0]:
                line_key = (tok.start[0], key)
        elif tok.type == tokenize.COMMENT and line_key is not None and line_key[0] == tok.start[0]:
            out.setdefault(line_key[1], tok.string.lstrip("#").strip())
        elif tok.type in (tokenize.NEWLINE, tokenize.NL) and depth == 0:
            pending = None
    return out


def descriptions(spec: str) -> dict[str, str]:
    """The comment of every key the config of ``spec`` documents (see ``_comments``),
    the method's files first, then ``jaxsurg.config`` (common keys and ``STAGE_FIELDS``)."""
    module = load_module(spec)
    config = module.get_config(spec.partition(":")[2] or None)
    paths = [module.__file__]
    try:
        paths.append(importlib.import_module(f"jaxsurg.methods.{config.method}.config").__file__)
    except ImportError:  # a method without a config module of its own (unet11)
        pass
    paths.append(config_lib.__file__)
    out: dict[str, str] = {}
    for path in paths:
        for k, v in _comments(path).items():
            out.setdefault(k, v)
    return out


def describe(key: str, texts: dict[str, str]) -> str:
    """The description of dotted ``key``: its own comment, else the stage field's
    (``STAGE_FIELDS.<leaf>`` for any stage block), else its block's."""
    leaf = key.rsplit(".", 1)[-1]
    for candidate in (key, f"STAGE_FIELDS.{leaf}"):
        if texts.get(candidate):
            return texts[candidate]
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    if parent and texts.get(parent):
        return f"({parent}: {texts[parent]})"
    return ""


def show(spec: str, config: ml_collections.ConfigDict) -> str:
    """``config`` as ``key = value  # description`` lines, sorted by key."""
    texts = descriptions(spec)
    flat = {k: _value(config, k) for k in config_lib.flatten_keys(config)}
    width = max(len(f"{k} = {v!r}") for k, v in flat.items())
    lines = []
    for k in sorted(flat):
        text = describe(k, texts)
        lines.append(f"{k} = {flat[k]!r}".ljust(width) + (f"  # {text}" if text else ""))
    return "\n".join(lines)


def _value(config: ml_collections.ConfigDict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


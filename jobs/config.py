"""Config nodes made from the settings dataclasses, so each setting and its default is written once.

A conf/ YAML file names its node in its defaults list (``- /settings/job@_here_: extract``) and
holds only what no dataclass default says: ``_target_``, interpolations, a preset's own values.
:func:`check_keys` refuses a key that no setting has, naming it and the valid ones.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Collection, Iterator
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
_REF = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")  # a whole-value reference to another node


def target_name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def settings_node(cls: type, *, exclude: Collection[str] = ()) -> dict[str, Any]:
    """``cls``'s fields as a config node: each default as its value, ``???`` where it has none.

    A default that is a dataclass instance becomes a node with its ``_target_``; a
    ``functools.partial`` default a ``_partial_`` node of the fields its function has defaults for
    (the caller fills in the others).
    """
    node: dict[str, Any] = {}
    for f in fields(cls):
        if not f.init or f.name in exclude:
            continue
        if f.default is not MISSING:
            node[f.name] = _plain(f.default)
        elif f.default_factory is not MISSING:
            node[f.name] = _plain(f.default_factory())
        else:
            node[f.name] = "???"
    return node


def _plain(value: Any) -> Any:
    if isinstance(value, functools.partial):
        cls = cast(type, value.func)
        defaults = {k: v for k, v in settings_node(cls).items() if v != "???"}
        kw = {k: _plain(v) for k, v in value.keywords.items()}
        return {"_target_": target_name(value.func), "_partial_": True, **defaults, **kw}
    if is_dataclass(value) and not isinstance(value, type):
        values = {f.name: _plain(getattr(value, f.name)) for f in fields(value) if f.init}
        return {"_target_": target_name(type(value)), **values}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def job_params(job: type) -> set[str]:
    """The keyword parameters a job class takes besides its ``**settings``."""
    params = inspect.signature(job).parameters.values()
    return {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}


def register_settings() -> None:
    """Put every settings node in Hydra's ConfigStore (group ``settings/<kind>``)."""
    from extract.encoders import ClipConfig, Siglip2Config, SiglipConfig
    from jobs.eval import EvalJob
    from jobs.extract import ExtractJob
    from jobs.report import ReportJob
    from jobs.stream import StreamJob
    from jobs.train import TrainJob
    from models.live import LiveConfig

    store = ConfigStore.instance().store
    jobs: dict[str, Any] = {
        "extract": ExtractJob,
        "train": TrainJob,
        "eval": EvalJob,
        "stream": StreamJob,
        "report": ReportJob,
    }
    for name, job in jobs.items():
        node = settings_node(job.Spec, exclude=job_params(job))
        store(group="settings/job", name=name, node=node)
    for name, cls in {"siglip": SiglipConfig, "clip": ClipConfig, "siglip2": Siglip2Config}.items():
        store(group="settings/encoder", name=name, node=settings_node(cls))
    store(group="settings/model", name="live", node=settings_node(LiveConfig))


def accepted_keys(target: Any) -> set[str] | None:
    """The keys a ``_target_`` takes (``None``: any). A job class with ``**settings`` takes its
    ``Spec``'s fields too."""
    if is_dataclass(target):
        return {f.name for f in fields(target) if f.init}
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    keys = {p.name for p in params if p.kind in named}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        spec = getattr(target, "Spec", None)
        if spec is None or not is_dataclass(spec):
            return None
        keys |= {f.name for f in fields(spec) if f.init}
    return keys


def _nodes(raw: dict[str, Any], node: Any, path: str, seen: set[str]) -> Iterator[tuple[str, dict]]:
    """``(path, node)`` for each dict under ``node``, following ``${other.node}`` references."""
    if isinstance(node, str) and (m := _REF.match(node)) and m.group(1) not in seen:
        seen.add(m.group(1))
        ref: Any = raw
        for part in m.group(1).split("."):
            ref = ref.get(part) if isinstance(ref, dict) else None
        yield from _nodes(raw, ref, m.group(1), seen)
    elif isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _nodes(raw, v, f"{path}.{k}", seen)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _nodes(raw, v, f"{path}[{i}]", seen)


def check_keys(cfg: DictConfig, root: str = "job") -> None:
    """Refuse a key that no setting has, naming it and the valid ones.

    Hydra refuses ``job.bogus=1`` while composing; this catches ``+job.bogus=1`` and the like in
    every node with a ``_target_`` that ``root`` uses.
    """
    raw = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=False))
    for path, node in _nodes(raw, raw.get(root), root, {root}):
        target = node.get("_target_")
        if not isinstance(target, str):
            continue
        try:
            keys = accepted_keys(get_object(target))
        except Exception:  # noqa: BLE001 - a bad _target_ is instantiate's to report
            continue
        unknown = sorted(set(node) - HYDRA_KEYS - keys) if keys is not None else []
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(f'{path}.{k}' for k in unknown)}; valid keys of "
                f"{path}: {', '.join(sorted(keys or ()))}"
            )
        check_types(get_object(target), node, path)


_KINDS: dict[Any, tuple[str, tuple[type, ...]]] = {
    int: ("an integer", (int,)),
    float: ("a number", (int, float)),
    bool: ("true or false", (bool,)),
    str: ("a string", (str,)),
}


def check_types(target: Any, node: dict[str, Any], path: str) -> None:
    """Refuse a value of the wrong type for a plain (int, float, bool, str, optional) setting of a
    settings dataclass, naming its key (``job.decode.fps=abc``)."""
    if not is_dataclass(target):
        return
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - an annotation we cannot resolve is not checked
        return
    for name, value in node.items():
        hint = hints.get(name)
        args = typing.get_args(hint)
        optional = type(None) in args
        if optional and len(args) == 2:
            hint = next(a for a in args if a is not type(None))
        if hint not in _KINDS or (value is None and optional):
            continue
        if isinstance(value, str) and "${" in value:
            continue  # an interpolation: checked where it points
        what, ok = _KINDS[hint]
        if not isinstance(value, ok) or (hint is not bool and isinstance(value, bool)):
            raise ValueError(f"{path}.{name} must be {what}, got {value!r}")

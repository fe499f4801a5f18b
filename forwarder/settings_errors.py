"""Settings validation errors as a person reads them: the variable to set, what it allows, how to fix it.

```
invalid forwarder settings: FORWARDER_MODE='bogus' is not allowed: use one of auto, proxy, replay, or
unset it for the default (auto)
```

One sentence per bad variable, joined with `; `. A secret's value is never shown.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import AliasChoices, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined
from pydantic_settings import BaseSettings

__all__ = ["settings_problems"]

_SHOWN = 60  # characters of a bad value quoted back


def settings_problems(exc: ValidationError, model: type[BaseSettings]) -> str:
    """The text of a `ConfigurationError` for the validation errors of `model` (`ForwarderSettings`)."""
    problems = [_problem(error, model) for error in exc.errors()]
    return "invalid forwarder settings: " + "; ".join(dict.fromkeys(problems))


def _problem(error: ErrorDetails, model: type[BaseSettings]) -> str:
    name, source = _field_of(error["loc"], model)
    if name is None:  # not a field's error (cannot happen with ForwarderSettings; be plain about it)
        return error["msg"]
    field = model.model_fields[name]
    variable = f"FORWARDER_{name.upper()}"
    value = "" if _base(field.annotation) is SecretStr else f"={_quote(error.get('input'))}"  # never a secret
    why = _why(error)
    allowed = _allowed(name, field)
    default = _default(field)
    unset = ""
    if default == "unset":
        unset = ", or unset it"
    elif default:
        unset = f", or unset it for the default ({default})"
    if source == name:  # an argument in code, not a variable
        return f"{name}{value} (an argument of ForwarderSettings.load) is not allowed{why}: pass {allowed}"
    if source != variable:  # one of Fly's variables
        return f"{source}{value} is not allowed{why}: set {variable} (it wins over {source}) to {allowed}"
    return f"{variable}{value} is not allowed{why}: use {allowed}{unset}"


def _field_of(loc: tuple[int | str, ...], model: type[BaseSettings]) -> tuple[str | None, str]:
    """The field an error's location names (an env variable, a Fly variable or the field's own name)."""
    where = str(loc[0]) if loc else ""
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        choices = [str(c) for c in alias.choices] if isinstance(alias, AliasChoices) else []
        if where == name or where in choices:
            # pydantic-settings reports the first alias whichever was read: name the one that is set.
            present = [c for c in choices if c.startswith(("FORWARDER_", "FLY_", "PRIMARY_")) and c in _environ()]
            return name, (present[0] if present and where != name and where not in present else where)
    return None, where


def _environ() -> set[str]:
    return {key.upper() for key in os.environ}


def _why(error: ErrorDetails) -> str:
    """What was wrong beyond the type, when pydantic's message says more than "should be a valid X"."""
    message = error["msg"]
    if error["type"] == "value_error":  # our own validators' text, after pydantic's "Value error, "
        return f" ({message.removeprefix('Value error, ')})"
    return ""


def _allowed(name: str, field: FieldInfo) -> str:
    annotation = field.annotation
    base = _base(annotation)
    bounds = _bounds(field)
    text: str
    if typing.get_origin(base) is Literal:
        text = "one of " + ", ".join(str(v) for v in typing.get_args(base))
    elif base is bool:
        text = "true or false (or 1/0, yes/no, on/off)"
    elif base is int:
        text = "a whole number" + bounds
    elif base is float:
        text = "a number" + bounds
    elif base is Path:
        text = "a file path"
    elif typing.get_origin(base) is tuple:
        text = "a comma-separated list such as GET,HEAD"
    elif base is SecretStr:
        text = "a secret string (the same random value on every node)"
    elif any(getattr(m, "pattern", None) for m in field.metadata):
        pattern = next(m.pattern for m in field.metadata if getattr(m, "pattern", None))
        text = "a duration such as 5s or 800ms" if "ms|s" in pattern else f"text matching {pattern}"
    elif name.endswith("url"):
        text = "an http(s) URL such as http://10.0.0.2:8080"
    else:
        text = "text" + (" that is not empty" if any(isinstance(m, MinLen) for m in field.metadata) else "")
    return text


def _bounds(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        if isinstance(meta, Gt):
            parts.append(f"greater than {meta.gt}")
        elif isinstance(meta, Ge):
            parts.append(f"at least {meta.ge}")
        elif isinstance(meta, Lt):
            parts.append(f"less than {meta.lt}")
        elif isinstance(meta, Le):
            parts.append(f"at most {meta.le}")
    return (" " + " and ".join(parts)) if parts else ""


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "computed"
    default = field.default
    if default is PydanticUndefined:
        return ""
    if default is None:
        return "unset"
    if isinstance(default, tuple):
        return ",".join(str(item) for item in default) or "empty"
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def _is_optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


def _base(annotation: Any) -> Any:
    """The annotation without `| None` and `Annotated[...]`."""
    if _is_optional(annotation):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 4] + "...'"

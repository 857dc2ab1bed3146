"""YAML files validated into pydantic models (profiles, claims): the one loader.

Every problem is one `ArtifactError` line naming the file and where in it: the line of a
YAML syntax error, or the field a validation error is about, with what is allowed there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from artifact.core.errors import ArtifactError, explain, more_errors

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: Path) -> Any:
    """The file's YAML content; a syntax error names its line."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"{mark.line + 1}" if mark else None
        raise ArtifactError(f"not valid YAML: {problem}", path=path, where=where) from None


def validate(
    model: type[M],
    raw: Any,
    path: Path,
    *,
    not_mapping: str,
    where: Callable[[tuple], str] | None = None,
) -> M:
    """`raw` (a YAML mapping) as `model`; the first error in one line (`where` names its
    place from the error's location, by default `field 'a.b'`)."""
    if not isinstance(raw, dict):
        raise ArtifactError(not_mapping, path=path)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        _, message = explain(err)
        if err["type"] == "extra_forbidden":
            message += " (check its spelling and the profile reference in README.md)"
            allowed = allowed_fields(model, loc)
            if allowed:
                message += f"; allowed here: {', '.join(allowed)}"
        message += more_errors(exc.errors())
        place = where(loc) if where else f"field '{field_path(loc)}'"
        raise ArtifactError(message, path=path, where=place) from None


def field_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def allowed_fields(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Field names allowed at the parent of `loc`, for 'unknown field' errors."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:
            args = getattr(current, "__args__", ())
            # dict[str, Model] -> Model; Model | None -> Model
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if not models:
                return None
            current = models[0]
            if isinstance(part, str) and part not in current.model_fields:
                continue
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
    args = getattr(current, "__args__", ())
    models = [a for a in (current, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
    return sorted(models[0].model_fields) if models else None

"""Pydantic models built from values already checked: what ``model_construct`` stores, without its per-field work.

The router builds a Decision this way on every request and the rebuild a dozen models per receipt; on both
measured paths ``model_construct``'s Python loop over the fields costs more than the work around it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

M = TypeVar("M", bound=BaseModel)

_set = object.__setattr__
_new = object.__new__


def _slot_setter(name: str) -> Callable[[Any, Any], None]:
    # The slots pydantic keeps beside __dict__, set through their descriptors: what object.__setattr__ does,
    # without looking each one up by name.
    descriptor = BaseModel.__dict__.get(name)
    if descriptor is not None and hasattr(descriptor, "__set__"):
        return descriptor.__set__  # type: ignore[no-any-return]  # a slot descriptor's __set__ is untyped
    return lambda obj, value: _set(obj, name, value)


_set_fields_set = _slot_setter("__pydantic_fields_set__")
_set_extra = _slot_setter("__pydantic_extra__")
_set_private = _slot_setter("__pydantic_private__")


class Construct(Protocol):
    def __call__(self, cls: type[M], fields: dict[str, Any], /) -> M: ...


def _construct_fast(cls: type[M], fields: dict[str, Any], /) -> M:
    obj = _new(cls)
    _set(obj, "__dict__", fields)
    _set_fields_set(obj, set(fields))
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


def _construct_documented(cls: type[M], fields: dict[str, Any], /) -> M:
    return cls.model_construct(**fields)


class _Sample(BaseModel):
    """A model shaped like the ones built this way (frozen or not, extra fields forbidden, any values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    threshold: Any
    observed: Any = None


def _checked() -> Construct:
    """The fast build if it makes exactly what pydantic makes (a pydantic upgrade could change that), else
    ``model_construct``."""
    sample = {"name": "m", "threshold": 1, "observed": 2.5}
    try:
        fast, built = _construct_fast(_Sample, dict(sample)), _Sample(**sample)
        if (
            fast == built
            and fast.model_dump() == sample
            and hash(fast) == hash(built)
            and fast.model_fields_set == built.model_fields_set
            and fast.__pydantic_extra__ is None is built.__pydantic_extra__
            and fast.__pydantic_private__ is None is built.__pydantic_private__
        ):
            return _construct_fast
    except Exception:  # noqa: BLE001 - any surprise means: take the documented path
        pass
    return _construct_documented


construct: Construct = _checked()
"""``cls.model_construct(**fields)`` for ``fields`` naming every field of ``cls`` by its name (not its alias),
on a model with no ``model_post_init``, private attributes or extra fields allowed; the caller has checked
every value. ``fields`` becomes the model's ``__dict__``."""


def plain_fields(cls: type[BaseModel]) -> list[str] | None:
    """The field names of ``cls`` in order, if :data:`construct` builds what ``model_construct`` would; else None."""
    fields = cls.__pydantic_fields__
    if (
        cls.__pydantic_root_model__
        or cls.__pydantic_post_init__
        or cls.__private_attributes__
        or cls.model_config.get("extra") == "allow"
        or any(f.alias is not None or f.validation_alias is not None for f in fields.values())
    ):
        return None
    return list(fields)

"""The pydantic constructor bypass builds exactly what model_construct builds, and knows the models it cannot."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from unhardcoded import _construct
from unhardcoded._construct import construct, plain_fields
from unhardcoded.router.decision import Decision, FallbackHop, Rejection


def test_the_fast_build_is_in_use_with_this_pydantic() -> None:
    # If this fails after a pydantic upgrade, the documented path is taken: correct, and slower.
    assert construct is _construct._construct_fast


def test_construct_builds_what_model_construct_builds() -> None:
    fields = {"model": "m", "rule": "r", "field": "f", "op": "lte", "threshold": 10, "observed": 12.5, "message": "x"}

    fast, documented = construct(Rejection, dict(fields)), Rejection.model_construct(**fields)

    assert fast == documented and hash(fast) == hash(documented)
    assert fast.model_dump() == documented.model_dump() and fast.model_fields_set == documented.model_fields_set
    hop = construct(FallbackHop, {"from_": "a", "to": "b", "reason": "error"})  # by field name, not alias
    assert hop == FallbackHop.model_construct(from_="a", to="b", reason="error")


def test_plain_fields_refuses_the_models_construct_cannot_build() -> None:
    class Extra(BaseModel):
        model_config = ConfigDict(extra="allow")
        a: int

    class Private(BaseModel):
        a: int
        _seen: int = PrivateAttr(default=0)

    class PostInit(BaseModel):
        a: int

        def model_post_init(self, context: Any) -> None:
            pass

    class Aliased(BaseModel):
        a: int = Field(alias="b")

    for cls in (Extra, Private, PostInit, Aliased):
        assert plain_fields(cls) is None, cls.__name__
    assert plain_fields(Decision) == list(Decision.model_fields)

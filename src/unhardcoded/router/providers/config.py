"""The providers file: which endpoints the router may call, the APIs each speaks, and where their keys are read from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ..._documents import read_document
from ...errors import ConfigError

__all__ = [
    "PROVIDERS_ENV",
    "ProviderConfig",
    "ProviderKey",
    "ProvidersConfig",
    "ProvidersFileError",
    "default_providers",
    "load_providers",
    "providers_from_env",
]

PROVIDERS_ENV = "UNHARDCODED_PROVIDERS"
"""Environment variable naming the default providers file."""

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

ApiName = Literal["chat_completions", "responses", "messages", "embeddings"]
_DEFAULT_APIS: tuple[ApiName, ...] = ("chat_completions",)
API_PATHS: dict[str, str] = {
    "chat_completions": "/chat/completions",
    "responses": "/responses",
    "messages": "/messages",
    "embeddings": "/embeddings",
}
"""Where each API is served, below a provider's ``base_url`` (``https://api.anthropic.com/v1`` + ``/messages``)."""
TRANSLATED_FROM_CHAT = frozenset({"responses", "messages"})
"""The APIs the proxy serves through a provider that speaks only chat completions, by translating (router/translate)."""


class ProviderKey(BaseModel):
    """One of several keys of a provider: its ``name`` (what spans and receipts show), the variable holding it,
    and its share of the calls."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    env: str = Field(pattern=_ENV_NAME)
    weight: float = Field(default=1.0, gt=0)


class ProviderConfig(BaseModel):
    """One OpenAI-compatible endpoint; catalog models name it in their ``provider`` field."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(min_length=1)
    base_url: str
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME)
    """Name of the environment variable holding the key; ``None`` sends no key."""
    timeout_s: float = Field(default=30.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    apis: list[ApiName] = Field(default_factory=lambda: list(_DEFAULT_APIS), min_length=1)
    """The APIs this endpoint speaks; a request for another is translated (Responses or Messages over chat
    completions) or not sent here (the implicit ``request:api`` rule)."""
    auth: Literal["bearer", "x-api-key"] = "bearer"
    """How the key is sent: ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` (Anthropic's own endpoint)."""
    keys: tuple[ProviderKey, ...] = ()
    """Several keys instead of ``api_key_env``: calls are spread by weight, skipping a key that is cooling
    down or out of rate-limit headroom."""

    @model_validator(mode="after")
    def _one_way_to_a_key(self) -> ProviderConfig:
        if self.keys and self.api_key_env is not None:
            raise ValueError("keys: give either api_key_env or keys, not both")
        seen: dict[str, int] = {}
        for index, key in enumerate(self.keys):
            if key.name in seen:
                raise ValueError(
                    f"keys[{index}].name: duplicate key name {key.name!r} (first at keys[{seen[key.name]}])"
                )
            seen[key.name] = index
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_inline_key(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "api_key" in data:
            # Said before pydantic can quote the value back in an error.
            raise ValueError(
                "api_key: keys are not written in the providers file; put the key in an "
                "environment variable and name that variable in api_key_env"
            )
        return data

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except Exception:  # noqa: BLE001 - whatever httpx.URL refuses, the message is ours
            raise ValueError("not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @property
    def chat_completions_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def url_for(self, api: str) -> str:
        return self.base_url.rstrip("/") + API_PATHS[api]

    def serves(self, api: str, *, natively: bool = False) -> bool:
        """Whether a request of ``api`` can be sent here: spoken, or (unless ``natively``) translated to chat."""
        if api in self.apis:
            return True
        return not natively and api in TRANSLATED_FROM_CHAT and "chat_completions" in self.apis

    def sent_api(self, api: str) -> str:
        """The API a request of ``api`` is sent in: its own when spoken here, else chat completions (translated)."""
        return api if api in self.apis else "chat_completions"


class ProvidersConfig(BaseModel):
    """The providers file: every endpoint the router may call, unique by name."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    providers: list[ProviderConfig] = Field(default_factory=list)
    _unservable: dict[tuple[str, bool], frozenset[str]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _unique_names(self) -> ProvidersConfig:
        seen: dict[str, int] = {}
        for index, provider in enumerate(self.providers):
            if provider.name in seen:
                raise ValueError(
                    f"providers[{index}].name: duplicate provider name {provider.name!r} "
                    f"(first defined at providers[{seen[provider.name]}])"
                )
            seen[provider.name] = index
        return self

    def get(self, name: str) -> ProviderConfig | None:
        for provider in self.providers:
            if provider.name == name:
                return provider
        return None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.providers]

    def unservable(self, api: str, stateful: bool = False) -> frozenset[str]:
        """The providers that cannot serve a request of ``api`` (``stateful``: not without translating)."""
        key = (api, stateful)
        found = self._unservable.get(key)
        if found is None:
            found = self._unservable[key] = frozenset(
                p.name for p in self.providers if not p.serves(api, natively=stateful)
            )
        return found


class ProvidersFileError(ConfigError):
    """A providers file cannot be read or is invalid; the message names file, field path and line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


def default_providers() -> ProvidersConfig:
    """No providers: ranking works, calls fail with ``unknown_provider``."""
    return ProvidersConfig(providers=[])


def load_providers(path: str | os.PathLike[str]) -> ProvidersConfig:
    """Read a providers file: YAML or JSON, read like policies and catalogs (a `.json` file must be strict JSON)."""
    source = str(Path(path))
    data = read_document(Path(path), ProvidersFileError)

    if not isinstance(data, Mapping):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ProvidersFileError(f"{source}: expected a mapping with a 'providers' list, found {found}", path=source)
    if "providers" not in data:
        raise ProvidersFileError(f"{source}: providers: field required", path=source)
    try:
        return ProvidersConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe_validation_error(err) for err in exc.errors())
        raise ProvidersFileError(f"{source}: {problems}", path=source) from None


def providers_from_env(environ: Mapping[str, str] | None = None) -> ProvidersConfig:
    """The providers file named by ``$UNHARDCODED_PROVIDERS``, or no providers when unset."""
    env = os.environ if environ is None else environ
    path = env.get(PROVIDERS_ENV, "").strip()
    if not path:
        return default_providers()
    return load_providers(path)


def _describe_validation_error(err: Mapping[str, Any]) -> str:
    # Only location and message: pydantic's input_value could be a pasted secret.
    if err.get("type") == "value_error":
        ctx_error = err.get("ctx", {}).get("error")
        message = str(ctx_error) if ctx_error is not None else str(err.get("msg", ""))
    elif err.get("type") == "missing":
        message = "field required"
    elif err.get("type") == "extra_forbidden":
        message = "unknown field"
    else:
        message = str(err.get("msg", "invalid"))
        message = message[:1].lower() + message[1:]
    path = _field_path(err.get("loc", ()))
    # Our own validators already put the path in front of the message.
    if not path or message.startswith(("providers[", "api_key:")):
        if message.startswith("api_key:") and path:
            return f"{path}.{message}"
        return message
    return f"{path}: {message}"


def _field_path(loc: Any) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out

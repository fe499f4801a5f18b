"""`@primary_only` and the registry of functions the primary may be asked to run."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar, overload

import anyio.from_thread
import anyio.to_thread
from pydantic import TypeAdapter, ValidationError

from ..context import current_forwarder
from ..exceptions import ConfigurationError, RPCValidationError, UnknownFunction

__all__ = ["Registry", "RemoteFunction", "default_registry", "primary_only"]

F = TypeVar("F", bound=Callable[..., Any])

_P = inspect.Parameter


class RemoteFunction:
    """A registered function with the pydantic adapters that carry its arguments and result."""

    def __init__(self, function: Callable[..., Any], name: str) -> None:
        self.function = function
        self.name = name
        self.is_async = inspect.iscoroutinefunction(function)
        self.signature = inspect.signature(function)
        try:
            hints = typing.get_type_hints(function)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot resolve the type hints of {name}: {exc}; @primary_only needs importable annotations"
            ) from exc
        self._arguments = {param: TypeAdapter(hints.get(param, Any)) for param in self.signature.parameters}
        self._result: TypeAdapter[Any] = TypeAdapter(hints.get("return", Any))

    def encode_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The JSON-ready `{"args": [...], "kwargs": {...}}` of a call, checked against the signature."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None
        out_args: list[Any] = []
        out_kwargs: dict[str, Any] = {}
        for param_name, value in bound.arguments.items():
            kind = self.signature.parameters[param_name].kind
            dump = self._arguments[param_name].dump_python
            if kind is _P.POSITIONAL_ONLY:
                out_args.append(dump(value, mode="json"))
            elif kind is _P.VAR_POSITIONAL:
                out_args.extend(dump(item, mode="json") for item in value)
            elif kind is _P.VAR_KEYWORD:
                out_kwargs.update({key: dump(item, mode="json") for key, item in value.items()})
            else:
                out_kwargs[param_name] = dump(value, mode="json")
        return {"args": out_args, "kwargs": out_kwargs}

    def decode_arguments(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Validate the arguments received by the primary; raise `RPCValidationError` naming each problem."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise RPCValidationError(f"{self.name}(): {exc}") from None
        problems: list[str] = []
        for param_name, value in list(bound.arguments.items()):
            kind = self.signature.parameters[param_name].kind
            validate = self._arguments[param_name].validate_python
            try:
                if kind is _P.VAR_POSITIONAL:
                    bound.arguments[param_name] = tuple(validate(item) for item in value)
                elif kind is _P.VAR_KEYWORD:
                    bound.arguments[param_name] = {key: validate(item) for key, item in value.items()}
                else:
                    bound.arguments[param_name] = validate(value)
            except ValidationError as exc:
                problems.extend(_describe(param_name, exc))
        if problems:
            raise RPCValidationError(f"{self.name}(): invalid arguments: " + "; ".join(problems))
        return bound.args, bound.kwargs

    def encode_result(self, value: Any) -> Any:
        try:
            return self._result.dump_python(value, mode="json")
        except Exception as exc:
            raise RPCValidationError(
                f"{self.name}() returned a value that does not match its return type: {exc}"
            ) from None

    def decode_result(self, data: Any) -> Any:
        try:
            return self._result.validate_python(data)
        except ValidationError as exc:
            raise RPCValidationError(
                f"{self.name}(): the primary's result does not match the return type here "
                f"({'; '.join(_describe('result', exc))}); are all nodes running the same code?"
            ) from None

    async def invoke(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the function here (on the primary): async ones awaited, sync ones in a worker thread."""
        if self.is_async:
            return await self.function(*args, **kwargs)
        return await anyio.to_thread.run_sync(functools.partial(self.function, *args, **kwargs))


def _describe(prefix: str, exc: ValidationError) -> list[str]:
    return [f"{'.'.join([prefix, *(str(loc) for loc in error['loc'])])}: {error['msg']}" for error in exc.errors()]


class Registry:
    """Names of the functions the primary may run on behalf of replicas. Only these can be called."""

    def __init__(self) -> None:
        self._functions: dict[str, RemoteFunction] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._functions

    def names(self) -> list[str]:
        return sorted(self._functions)

    def get(self, name: str) -> RemoteFunction:
        """The function registered as `name`; `UnknownFunction` if there is none."""
        try:
            return self._functions[name]
        except KeyError:
            raise UnknownFunction(
                f"no @primary_only function is registered as {name!r} on this node; "
                "are all nodes running the same version of the app?"
            ) from None

    def register(self, function: Callable[..., Any], name: str | None = None) -> RemoteFunction:
        name = name or f"{function.__module__}.{function.__qualname__}"
        if "<" in name:
            raise ConfigurationError(
                f"cannot register {name}: @primary_only functions must be defined at module level "
                "(or given an explicit name=) so every node resolves the same name"
            )
        existing = self._functions.get(name)
        if existing is not None and existing.function is not function:
            raise ConfigurationError(f"two different functions are registered as {name!r}; pass name= to one")
        remote = RemoteFunction(function, name)
        self._functions[name] = remote
        return remote

    @overload
    def primary_only(self, function: F, /) -> F: ...
    @overload
    def primary_only(self, /, *, name: str | None = None) -> Callable[[F], F]: ...
    def primary_only(self, function: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
        """Run the decorated function on the primary; see the module-level `primary_only`."""
        if function is None:
            return lambda fn: self._decorate(fn, name)
        return self._decorate(function, name)

    def _decorate(self, function: F, name: str | None) -> F:
        remote = self.register(function, name)
        wrapper: Callable[..., Any]
        if remote.is_async:

            @functools.wraps(function)
            async def call_async(*args: Any, **kwargs: Any) -> Any:
                forwarder = current_forwarder()
                if forwarder is None:
                    return await function(*args, **kwargs)
                return await forwarder.call(remote, args, kwargs)

            wrapper = call_async
        else:

            @functools.wraps(function)
            def call_sync(*args: Any, **kwargs: Any) -> Any:
                forwarder = current_forwarder()
                if forwarder is None or forwarder.is_primary:
                    return function(*args, **kwargs)
                try:
                    return anyio.from_thread.run(forwarder.call, remote, args, kwargs)
                except RuntimeError as exc:
                    if "worker thread" not in str(exc) and "event loop" not in str(exc):
                        raise
                    raise RuntimeError(
                        f"the sync @primary_only function {remote.name} was called on the event loop thread of a "
                        "replica, where it would block the loop while calling the primary; call it from a sync "
                        "endpoint or via `await anyio.to_thread.run_sync(...)`, or make it `async def`"
                    ) from None

            wrapper = call_sync
        wrapper.__dict__["__forwarder_remote__"] = remote
        return typing.cast(F, wrapper)


default_registry = Registry()


@overload
def primary_only(function: F, /) -> F: ...
@overload
def primary_only(*, name: str | None = None) -> Callable[[F], F]: ...
def primary_only(function: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
    """Run the decorated function on the primary, wherever it is called.

    On the primary it simply runs. On a replica it is sent to the primary over the signed RPC
    endpoint; the caller then waits until this node's replica holds the function's writes, so
    whatever it reads next includes them. Arguments and the result travel as JSON, validated by
    pydantic from the type hints. Works in HTTP handlers, websocket handlers and background tasks.

    ```python
    @primary_only
    async def post_message(author: str, text: str) -> Message:
        ...
    ```

    If the replica does not catch up within `FORWARDER_REPLICATION_TIMEOUT`, `ReplicationTimeout`
    is raised with `committed=True` and the primary's result in `.result`: the write is not lost.
    """
    if function is None:
        return lambda fn: default_registry._decorate(fn, name)
    return default_registry._decorate(function, name)

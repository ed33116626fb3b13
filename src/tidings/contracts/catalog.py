"""The contract catalog: every integration event an application knows, its versions, and who sends and receives it.

It is read from the objects as they are wired, without running them:

- contracts and their readable versions come from the registries (the current class, the
  upcaster chain) and from the declared classes of old versions (``class V1(IntegrationEvent,
  name=..., version=1)`` kept beside the current one); a readable version whose class is not
  declared is listed with no shape;
- an application *sends* what its translators return (their return annotation, or the classes
  their ``return`` statements build) and what its handlers, translators and sagas pass to
  ``publish(SomeContract(...))``, found by reading their source;
- an application *receives* what its consumers and saga runners route.

What the source does not show cannot be known: ``uow.publish(event)`` of an event built elsewhere,
a contract published by a helper function, a consumer routing by a name computed at run time.
Those contracts are still exported (they are registered) with their producers listed as unknown.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tidings.messaging.contracts import IntegrationEvent, declared_versions, topic_of
from tidings.messaging.registry import MessageRegistry, Upcaster

__all__ = ["Catalog", "Contract", "Usage", "catalog_of", "load_target"]


@dataclass
class Contract:
    """One integration event across its versions, with where it travels and who uses it."""

    name: str
    current: type[IntegrationEvent]
    #: Every version a reader still accepts, oldest first; None where the old shape is not declared.
    versions: dict[int, type[IntegrationEvent] | None] = field(default_factory=dict)
    #: "application: how" for each place it is published from.
    producers: set[str] = field(default_factory=set)
    #: "application: consumer" for each place it is read.
    consumers: set[str] = field(default_factory=set)
    #: The upcaster from each old version to the next, as registered.
    upcasters: dict[int, Upcaster] = field(default_factory=dict)

    @property
    def topic(self) -> str:
        """The topic every version travels on."""
        return topic_of(self.current)

    @property
    def key(self) -> str | None:
        """The field whose value partitions the messages by default (None: the publisher's aggregate)."""
        return self.current.contract_key

    @property
    def importance(self) -> str:
        """The business importance of the contract (that of its current version)."""
        return self.current.contract_importance


@dataclass
class Usage:
    """What one application (bounded context) sends and receives, by contract name."""

    name: str
    sends: dict[str, set[str]] = field(default_factory=dict)
    receives: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class Catalog:
    """Every contract found, and per application what it sends and receives."""

    contracts: dict[str, Contract] = field(default_factory=dict)
    applications: dict[str, Usage] = field(default_factory=dict)

    def sorted(self) -> list[Contract]:
        """The contracts by name."""
        return [self.contracts[name] for name in sorted(self.contracts)]


def load_target(target: Any) -> Any:
    """The object a ``--app`` spec names, called if it is a factory (awaited if that returns a coroutine)."""
    if callable(target) and not isinstance(target, type) and not hasattr(target, "registry"):
        try:
            inspect.signature(target).bind()
        except (TypeError, ValueError):
            raise ValueError(
                f"{getattr(target, '__qualname__', target)!r} is a function that needs arguments; name the object to read "
                "or a function without parameters that returns it"
            ) from None
        target = target()
    if inspect.isawaitable(target):
        target = asyncio.run(_awaited(target))
    return target


async def _awaited(value: Any) -> Any:
    return await value


def catalog_of(*targets: Any) -> Catalog:
    """The catalog of what ``targets`` know: applications, consumers, saga runners, context parts, registries,
    contract classes, modules of contracts, or iterables of those."""
    builder = _Builder()
    for target in targets:
        builder.add(target, None)
    return builder.finish()


class _Builder:
    def __init__(self) -> None:
        self.classes: dict[str, type[IntegrationEvent]] = {}
        # Classes named explicitly win over other declarations of the same version still imported.
        self.explicit: dict[tuple[str, int], type[IntegrationEvent]] = {}
        self.steps: dict[str, dict[int, Upcaster]] = {}
        self.usage: dict[str, Usage] = {}

    def add(self, target: Any, group: str | None) -> None:
        from tidings.app.application import Application
        from tidings.runtime.consumer import Consumer
        from tidings.runtime.sagas import SagaRunner

        if isinstance(target, Application):
            self._application(target)
        elif isinstance(target, Consumer):
            self._consumer(target, group or target.name)
        elif isinstance(target, SagaRunner):
            self._saga_runner(target, group or target.context or "sagas")
        elif isinstance(target, MessageRegistry):
            self._registry(target)
        elif isinstance(target, type) and issubclass(target, IntegrationEvent):
            self._contract(target)
        elif isinstance(target, types.ModuleType):
            for value in vars(target).values():
                if isinstance(value, type) and issubclass(value, IntegrationEvent) and value is not IntegrationEvent:
                    self._contract(value)
        elif hasattr(target, "application") and hasattr(target, "consumers"):
            # A bounded context's parts (examples' ContextParts, or anything shaped like it).
            name = target.application.name
            self._application(target.application)
            for consumer in target.consumers:
                self._consumer(consumer, name)
            if getattr(target, "saga_runner", None) is not None:
                self._saga_runner(target.saga_runner, name)
        elif isinstance(target, Iterable) and not isinstance(target, (str, bytes)):
            for item in target:
                self.add(item, group)
        else:
            raise TypeError(
                f"cannot read contracts from {target!r}: name an Application, a Consumer, a SagaRunner, context parts "
                "(with .application and .consumers), a MessageRegistry, an IntegrationEvent class, a module, a list of "
                "those, or a function returning one"
            )

    def _contract(self, contract: type[IntegrationEvent], registry: MessageRegistry | None = None) -> None:
        name = contract.message_name
        self.explicit[(name, contract.message_version)] = contract
        known = self.classes.get(name)
        if known is None or contract.message_version > known.message_version:
            self.classes[name] = contract
        if registry is not None:
            steps = self.steps.setdefault(name, {})
            for version in registry.upcast_steps(name):
                steps.setdefault(version, registry.upcaster_for(name, version))  # type: ignore[arg-type]

    def _registry(self, registry: MessageRegistry) -> None:
        for name in registry.names:
            message_type = registry.type_for(name)
            if issubclass(message_type, IntegrationEvent):
                self._contract(message_type, registry)

    def _uses(self, group: str) -> Usage:
        return self.usage.setdefault(group, Usage(group))

    def _application(self, app: Any) -> None:
        self._registry(app.registry)
        usage = self._uses(app.name)
        for translators in app._translators.values():
            for translate, topic in translators:
                for contract in _returned(translate) | _published_in(translate):
                    self._contract(contract, app.registry)
                    # A translator's topic= overrides the contract's: say so, the documents show the declared one.
                    elsewhere = f" (on topic {topic}, not the declared {topic_of(contract)})" if topic and topic != topic_of(contract) else ""
                    usage.sends.setdefault(contract.message_name, set()).add(f"translator {translate.__qualname__}{elsewhere}")
        handlers = [*app._command_handlers.values(), *(h for hs in app._event_handlers.values() for h in hs)]
        for handler in handlers:
            for contract in _published_in(handler):
                self._contract(contract, app.registry)
                usage.sends.setdefault(contract.message_name, set()).add(f"uow.publish in {handler.__qualname__}")

    def _consumer(self, consumer: Any, group: str) -> None:
        usage = self._uses(group)
        # Routes are keyed by message name; only names the consumer's registry maps to a contract count.
        for name in getattr(consumer, "_routes", {}):
            if name in consumer.registry:
                message_type = consumer.registry.type_for(name)
                if issubclass(message_type, IntegrationEvent):
                    self._contract(message_type, consumer.registry)
                    usage.receives.setdefault(name, set()).add(f"consumer {consumer.name}")

    def _saga_runner(self, runner: Any, group: str) -> None:
        usage = self._uses(group)
        for message_type in runner.message_types:
            if issubclass(message_type, IntegrationEvent):
                self._contract(message_type, runner.registry)
                usage.receives.setdefault(message_type.message_name, set()).add("saga runner")
        for saga_type in runner.sagas.values():
            for contract in _published_in(saga_type):
                self._contract(contract, runner.registry)
                usage.sends.setdefault(contract.message_name, set()).add(f"saga {saga_type.saga_type}")

    def finish(self) -> Catalog:
        catalog = Catalog(applications=dict(sorted(self.usage.items())))
        for name, current in self.classes.items():
            declared = declared_versions(name, near=current.__module__)
            declared.update({version: cls for (n, version), cls in self.explicit.items() if n == name})
            declared[current.message_version] = current
            steps = self.steps.get(name, {})
            versions: dict[int, type[IntegrationEvent] | None] = {current.message_version: current}
            for version in range(current.message_version - 1, 0, -1):
                if version not in steps:
                    break
                versions[version] = declared.get(version)
            contract = Contract(name, current, dict(sorted(versions.items())), upcasters=dict(steps))
            for usage in self.usage.values():
                contract.producers.update(f"{usage.name}: {how}" for how in usage.sends.get(name, ()))
                contract.consumers.update(f"{usage.name}: {how}" for how in usage.receives.get(name, ()))
            catalog.contracts[name] = contract
        return catalog


def _contracts_in_annotation(annotation: Any) -> set[type[IntegrationEvent]]:
    if isinstance(annotation, type) and issubclass(annotation, IntegrationEvent):
        return {annotation}
    found: set[type[IntegrationEvent]] = set()
    for argument in typing.get_args(annotation):
        found |= _contracts_in_annotation(argument)
    return found


def _returned(fn: Callable[..., Any]) -> set[type[IntegrationEvent]]:
    try:
        annotation = typing.get_type_hints(fn).get("return")
    except Exception:
        # An annotation that does not resolve (a name imported under TYPE_CHECKING) says nothing.
        annotation = None
    found = _contracts_in_annotation(annotation)
    return found or _built(fn, lambda node: isinstance(node, ast.Return) and node.value is not None, lambda node: node.value)


def _published_in(obj: Any) -> set[type[IntegrationEvent]]:
    """The contract classes built directly in ``….publish(Contract(...))`` calls in the source of ``obj``."""

    def is_publish(node: ast.AST) -> bool:
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "publish" and bool(node.args)

    return _built(obj, is_publish, lambda node: node.args[0])


def _built(obj: Any, match: Callable[[Any], bool], value_of: Callable[[Any], Any]) -> set[type[IntegrationEvent]]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError, SyntaxError):
        return set()
    names = _names_of(obj)
    found: set[type[IntegrationEvent]] = set()
    for node in ast.walk(tree):
        if match(node):
            value = value_of(node)
            if isinstance(value, ast.Call):
                resolved = _resolve(value.func, names)
                if isinstance(resolved, type) and issubclass(resolved, IntegrationEvent):
                    found.add(resolved)
    return found


def _names_of(obj: Any) -> dict[str, Any]:
    import sys

    if isinstance(obj, type):
        return dict(vars(sys.modules[obj.__module__]))
    function = inspect.unwrap(obj)
    names = dict(getattr(function, "__globals__", {}))
    try:
        names.update(inspect.getclosurevars(function).nonlocals)
    except (TypeError, ValueError):
        pass
    return names


def _resolve(node: ast.AST, names: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, names)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None

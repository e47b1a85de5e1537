"""The set of automations a worker runs, found by importing the modules named in settings."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Iterator

from garrison.core.contract import Automation, Message
from garrison.errors import ConfigurationError, DefinitionError, UnknownAutomation


class Registry:
    """Automations by name, and which of them take a given message."""

    def __init__(self, automations: Iterable[Automation] = ()) -> None:
        self._by_name: dict[str, Automation] = {}
        self._routes: dict[tuple[str, str | None], tuple[Automation, ...]] = {}
        for automation in automations:
            self.add(automation)

    @classmethod
    def from_modules(cls, modules: Iterable[str], extra: Iterable[Automation] = ()) -> Registry:
        """Import each module and register every automation defined at its top level."""
        registry = cls(extra)
        # Like ``celery -A``: a project's own modules import from the directory it is started in.
        if modules and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        for path in modules:
            try:
                module = importlib.import_module(path)
            except DefinitionError:
                raise  # names the automation and the part that is wrong
            except Exception as exc:  # an ImportError, or any error the module raises as it runs
                raise ConfigurationError(
                    f"cannot import automation module {path!r}: {type(exc).__name__}: {exc}", field="automations"
                ) from exc
            found = [v for v in vars(module).values() if isinstance(v, Automation)]
            for automation in found:
                if registry._by_name.get(automation.name) is not automation:
                    registry.add(automation)
        return registry

    def add(self, automation: Automation) -> None:
        existing = self._by_name.get(automation.name)
        if existing is not None and existing is not automation:
            raise DefinitionError("two automations share a name", automation=automation.name)
        self._by_name[automation.name] = automation
        self._routes.clear()

    def get(self, name: str) -> Automation:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownAutomation(
                f"no automation named {name!r} is registered (known: {sorted(self._by_name)})",
                automation=name,
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Automation]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def route(self, message: Message) -> tuple[Automation, ...]:
        """The automations that take ``message``, in registration order (cached by name and target)."""
        cache_key = (message.name, message.target)
        routed = self._routes.get(cache_key)
        if routed is None:
            routed = tuple(a for a in self._by_name.values() if a.accepts(message))
            self._routes[cache_key] = routed
        return routed

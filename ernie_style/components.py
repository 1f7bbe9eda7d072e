"""Registries of named components with typed options: loss balancers and sharing layers.

A component is one class, registered under a name with its registry's decorator, that declares
its options as a nested `Config` dataclass (fields made with `ernie_style.config.option`; an
optional `validate()` checks ranges and raises `OptionError`):

    @register_balancer("mine")
    class MyBalancer(LossBalancer):
        @dataclass
        class Config:
            beta: float = option(0.5, "smoothing, in [0, 1)")

The registry is the one source of the names: run configs check `balancing` / `sharing` against
it and turn `balancing_options` / `sharing_options` into the component's `Config` when they
are loaded (`Registry.parse`), so a typo or a wrong type fails before any work starts.

This module imports no torch: a registry imports the module that registers its built-in
components (which does) only when its names or classes are first asked for, so config modules
can refer to the registries at import time and stay cheap to import.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ernie_style.config import from_dict

T = TypeVar("T", bound=type)


class OptionError(ValueError):
    """A bad option value: `option` names it (dotted below the options, e.g. `weights.a`),
    `requirement` says what it must be (`must be > 0, got 0`)."""

    def __init__(self, option: str, requirement: str, message: str | None = None) -> None:
        self.option = option
        self.requirement = requirement
        super().__init__(message or f"{option} {requirement}")


def check_number(
    option: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """`value` as a finite float inside the interval, else an `OptionError` naming `option`."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and (
            value < high if open_high else value <= high
        )
    if not ok:
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise OptionError(option, f"must be a finite number in {interval}, got {value!r}")
    return float(value)


def check_count(option: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`, else an `OptionError` naming `option`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise OptionError(option, f"must be an integer >= {minimum}, got {value!r}")
    return value


def option_names(config: type) -> list[str]:
    """The option names a `Config` dataclass declares, in declaration order."""
    return [f.name for f in dataclasses.fields(config)]


def option_defaults(config: type) -> dict[str, Any]:
    """Each option of a `Config` dataclass with its default value."""
    defaults = {}
    for field in dataclasses.fields(config):
        if field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
        else:
            defaults[field.name] = field.default
    return defaults


def option_values(config: Any) -> dict[str, Any]:
    """The values of a `Config` instance by option name (not copied)."""
    return {name: getattr(config, name) for name in option_names(type(config))}


class Registry:
    """Component classes by name, each with a nested `Config` dataclass of its options.

    `what` names the kind in messages ("loss balancing strategy"); `attribute` is the class
    attribute the decorator sets to the registered name; `builtins` is the module whose import
    registers the built-in components (imported on first use); `option_message` formats an
    `OptionError` when no config key is given (fields: what, name, option, requirement).
    """

    def __init__(
        self,
        what: str,
        attribute: str,
        builtins: str,
        option_message: str = "{what} {name!r}: option {option!r} {requirement}",
    ) -> None:
        self.what = what
        self.attribute = attribute
        self.builtins = builtins
        self.option_message = option_message
        self._classes: dict[str, type] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register the class under `name` (and set its name attribute)."""

        def decorate(cls: T) -> T:
            self._add(name, cls)
            return cls

        return decorate

    def _add(self, name: str, cls: type) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.what} names must be identifiers, got {name!r}")
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
            raise TypeError(f"{cls.__name__} must declare its options as a `Config` dataclass")
        existing = self._classes.get(name)
        same = existing is not None and (existing.__module__, existing.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if existing is not None and not same:
            raise ValueError(f"{self.what} {name!r} is already registered by {existing.__name__}")
        setattr(cls, self.attribute, name)
        self._classes[name] = cls

    def unregister(self, name: str) -> None:
        """Remove `name` (for tests, or a plugin that replaces a component)."""
        self._load()
        self._classes.pop(name, None)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.builtins)

    def names(self) -> tuple[str, ...]:
        """The registered names: the built-ins in their module's order, then later ones."""
        self._load()
        return tuple(self._classes)

    def get(self, name: str) -> Any:
        """The class registered as `name`; a ValueError lists the registered names."""
        self._load()
        if name not in self._classes:
            raise ValueError(f"unknown {self.what} {name!r}; valid: {', '.join(self._classes)}")
        return self._classes[name]

    def parse(self, name: str, options: Any = None, key: str = "") -> Any:
        """`options` (a mapping, None, or already a `Config`) as component `name`'s validated
        `Config`. Unknown options, wrong types and bad values are ValueErrors; with `key`
        (e.g. "balancing_options") they name the dotted key (`balancing_options.temprature`)."""
        config_cls = self.get(name).Config
        if isinstance(options, config_cls):
            options = option_values(options)
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise ValueError(f"{key or 'options'}: expected a mapping, got {options!r}")
        valid = option_names(config_cls)
        unknown = sorted(str(k) for k in options if not isinstance(k, str) or k not in valid)
        if unknown:
            where = f"{', '.join(f'{key}.{k}' for k in unknown)}: unknown option" if key else ""
            raise ValueError(
                (where or f"unknown option(s) {unknown}")
                + f" for {self.what} {name!r}; valid: {', '.join(sorted(valid)) or 'none'}"
            )
        try:
            return from_dict(config_cls, options, f"{key}." if key else "")
        except OptionError as error:
            raise self.explain(name, error, key) from None

    def explain(self, name: str, error: OptionError, key: str = "") -> OptionError:
        """`error` reworded: under `key` as `key.option requirement`, else with the
        registry's `option_message`."""
        if key:
            message = f"{key}.{error.option} {error.requirement}"
        else:
            message = self.option_message.format(
                what=self.what, name=name, option=error.option, requirement=error.requirement
            )
        return OptionError(error.option, error.requirement, message)


#: Loss balancers (`ernie_style.train.balancing`), decorated with `register_balancer(name)`.
balancer_registry = Registry(
    "loss balancing strategy", attribute="name", builtins="ernie_style.train.balancing"
)
#: Fine-tuning sharing layers (`ernie_style.finetune.sharing`), `register_sharing(name)`.
sharing_registry = Registry(
    "sharing kind",
    attribute="kind",
    builtins="ernie_style.finetune.sharing",
    option_message="{option} {requirement} ({what} {name!r})",
)

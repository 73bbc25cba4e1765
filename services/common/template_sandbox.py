"""The Jinja2 sandbox every step template runs in, bounded so that no template can build a huge value.

Jinja2's ``ImmutableSandboxedEnvironment`` already keeps templates away from Python internals and from
mutating the context; it does not bound what they build: ``{{ "a" * 50000000 }}`` makes 50 MB and
``{% for i in range(100000) %}{% for j in range(100000) %}`` runs ten billion iterations. Here:

- where one step could multiply a size, the result's size is estimated *before* it is made: ``*``,
  ``**``, printf and ``str.format`` widths, padding, ``replace``, ``join``, ``indent``, ``wordwrap``,
  ``lipsum``;
- every value an operator, a concatenation (``~``), a filter or a call takes or returns, and every value
  written to the output, is weighed: how long it would be as text, nested lists and dicts included
  (a list holding one long string many times is small in memory and huge as text). Weighing stops just
  past the limit, so it costs at most that much. What is left grows a value by a small constant factor
  at most, so nothing much larger than :data:`MAX_VALUE_CHARS` is ever built;
- loop iterations and macro calls (ten each) share one budget per render, and ``range`` is capped.

A refused template raises :class:`TemplateLimitExceeded` (a ``SecurityError``), which the renderer turns
into a :class:`~services.common.templates.RenderError` like any other failure.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import re
import string
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

from jinja2 import nodes
from jinja2.defaults import DEFAULT_NAMESPACE
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

# The longest value (as text, in characters) any expression may build: the body cap, since nothing
# larger could be sent anyway (see services.common.templates).
MAX_VALUE_CHARS = 1_048_576
# Loop iterations and macro calls of one template render, all together; also the longest range().
MAX_LOOP_ITERATIONS = 100_000
# A macro call costs about ten loop iterations, so it spends ten of the budget.
MACRO_CALL_COST = 10
# The largest integer an expression may produce, in bits (a 1,000-digit number is about 3,300 bits).
MAX_POWER_BITS = 4096

_iterations_left: contextvars.ContextVar[int] = contextvars.ContextVar("template_iterations_left")


class TemplateLimitExceeded(SecurityError):
    """A template would build a value, or run a loop, beyond the sandbox's limits."""


def _refuse_over(size: int, what: str) -> None:
    if size > MAX_VALUE_CHARS:
        raise TemplateLimitExceeded(f"{what} would be {size:,} long, over the limit of {MAX_VALUE_CHARS:,}")


def weight(value: Any) -> int:
    """How long ``value`` would be as text, at most (nested lists, tuples, sets, dicts and namespaces
    included); counting stops once past :data:`MAX_VALUE_CHARS`, so it costs at most that much."""
    total, pending = 0, [value]
    while pending and total <= MAX_VALUE_CHARS:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 4 * len(item)  # brackets; quotes and a separator per item
            if total <= MAX_VALUE_CHARS:
                pending.extend(item)
        elif isinstance(item, dict):
            total += 2 + 8 * len(item)
            if total <= MAX_VALUE_CHARS:
                pending.extend(item.keys())
                pending.extend(item.values())
        elif isinstance(item, Namespace):
            pending.append(item._Namespace__attrs)  # its repr shows them
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 2
        else:
            total += 32
    return total


def _checked(value: Any) -> Any:
    """``value``, refused when it would be longer than the limit as text, or is an integer over the bit
    limit."""
    if type(value) is str:  # the common case, on every output expression: keep it cheap
        _refuse_over(len(value), "a value")
        return value
    if isinstance(value, int) and value.bit_length() > MAX_POWER_BITS:
        raise TemplateLimitExceeded(f"an integer of {value.bit_length():,} bits is over the limit of {MAX_POWER_BITS}")
    if not isinstance(value, int | float | bool | type(None)):
        _refuse_over(weight(value), "a value")
    return value


def _repeated_size(left: Any, right: Any) -> int:
    """The size of ``left * right`` when it repeats a sequence, else 0."""
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, str | list | tuple) and isinstance(count, int):
            return weight(sequence) * max(count, 0)
    return 0


def _check_power(base: Any, exponent: Any) -> None:
    integers = isinstance(base, int) and isinstance(exponent, int)
    if integers and exponent > 0 and abs(base) > 1 and abs(base).bit_length() * exponent > MAX_POWER_BITS:
        raise TemplateLimitExceeded(f"{base} ** {exponent} is over the limit of {MAX_POWER_BITS} bits")


_PRINTF_NUMBERS = re.compile(r"%[#0 +\-]*(\d+|\*)?(?:\.(\d+|\*))?")


def _check_widths(numbers: Iterable[str], args: Iterable[Any]) -> None:
    """Field widths and precisions (of printf or ``str.format``) must stay under the value limit; a
    width taken from the arguments (``*`` or ``{:{}}``) likewise, so no int argument may exceed it."""
    for number in numbers:
        if number.isdigit():
            _refuse_over(int(number), "a field width")
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and arg > MAX_VALUE_CHARS:
            _refuse_over(arg, "a field width")


def _check_printf(template: Any, args: Any) -> None:
    if isinstance(template, str):
        values = args if isinstance(args, tuple) else (args,)
        numbers = [n for match in _PRINTF_NUMBERS.finditer(template) for n in match.groups() if n]
        _check_widths(numbers, [a for a in values if "*" in template])


def _check_format(template: str, args: Iterable[Any]) -> None:
    specs = [spec for _, _, spec, _ in string.Formatter().parse(template) if spec]
    _check_widths(re.findall(r"\d+", " ".join(specs)), args if "{" in " ".join(specs) else ())


def _occurrences(text: str, old: str) -> int:
    return len(text) + 1 if old == "" else text.count(old)


def _joined_size(separator: str, items: list[Any]) -> int:
    return len(separator) * max(len(items) - 1, 0) + weight(items)


# How long each amplifying operation's result would be, from its subject and arguments (by name: the
# str method or the filter), so it is refused before it is built.
def _estimate(name: str, subject: Any, arguments: dict[str, Any]) -> int:
    text = subject if isinstance(subject, str) else ""
    if name in {"center", "ljust", "rjust", "zfill"}:
        width = arguments.get("width", 0)
        return max(len(text), width if isinstance(width, int) else 0)
    if name == "expandtabs":
        tab = arguments.get("tabsize", 8)
        return len(text) + text.count("\t") * (tab if isinstance(tab, int) else 0)
    if name == "replace":
        old, new = arguments.get("old", ""), arguments.get("new", "")
        return len(text) + _occurrences(text, str(old)) * len(str(new))
    if name == "indent":
        width = arguments.get("width", 4)
        return len(text) + (text.count("\n") + 1) * (len(width) if isinstance(width, str) else int(width))
    if name == "wordwrap":
        width, wrap = arguments.get("width", 79), arguments.get("wrapstring") or "\n"
        return len(text) + (len(text) // max(int(width), 1) + 1) * len(wrap)
    return 0


_STR_METHOD_ARGUMENTS = {
    "center": ("width",),
    "ljust": ("width",),
    "rjust": ("width",),
    "zfill": ("width",),
    "expandtabs": ("tabsize",),
    "replace": ("old", "new"),
}


def _bounded_filter(name: str, filter_function: Callable[..., Any]) -> Callable[..., Any]:
    """``filter_function`` with its result checked, and its size estimated first where it can amplify."""
    signature = inspect.signature(filter_function)
    subject_parameter = next(
        (p for p in signature.parameters if p not in {"eval_ctx", "environment", "env", "context"}), None
    )

    @functools.wraps(filter_function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        for argument in (*args, *kwargs.values()):
            _checked(argument)
        if name in {"center", "indent", "replace", "wordwrap"}:
            bound = signature.bind(*args, **kwargs)
            _refuse_over(_estimate(name, bound.arguments.get(subject_parameter or ""), bound.arguments), name)
        elif name == "join":
            bound = signature.bind(*args, **kwargs)
            items = list(bound.arguments["value"])
            _refuse_over(_joined_size(str(bound.arguments.get("d", "")), items), "join")
            bound.arguments["value"] = items
            args, kwargs = bound.args, bound.kwargs
        elif name == "format" and args:
            _check_printf(args[0], tuple(args[1:]) + tuple(kwargs.values()))
        return _checked(filter_function(*args, **kwargs))

    return bounded


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    # A range's length does not fit a C ssize_t past 2**63 (len() raises OverflowError), hence the compare.
    if numbers.start + MAX_LOOP_ITERATIONS * numbers.step in numbers:
        raise TemplateLimitExceeded(f"a range is over the limit of {MAX_LOOP_ITERATIONS:,} items")
    return numbers


def _spend_iteration(cost: int = 1) -> None:
    left = _iterations_left.get() - cost
    if left < 0:
        raise TemplateLimitExceeded(
            f"loops and macro calls ran over the limit of {MAX_LOOP_ITERATIONS:,} iterations in all"
        )
    _iterations_left.set(left)


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """Iterate ``iterable`` within the render's budget."""
    for item in iterable:
        _spend_iteration()
        yield item


def with_loop_budget(render: Callable[[], str]) -> str:
    """Run ``render`` with a fresh budget of loop iterations and macro calls (the budget lives in a context variable, so
    concurrent renders do not share one)."""
    token = _iterations_left.set(MAX_LOOP_ITERATIONS)
    try:
        return render()
    finally:
        _iterations_left.reset(token)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every size a template can build bounded (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, *, autoescape: bool, **options: Any) -> None:
        # finalize sees every value written to the output, before it becomes text.
        super().__init__(autoescape=autoescape, finalize=_checked, **options)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        # Two private hooks, not part of a template's language: the loop budget and the checks of `~`.
        self.filters["_hw_counted"] = _counted
        self.filters["_hw_checked"] = _checked
        self.globals = {**DEFAULT_NAMESPACE, "range": _bounded_range}

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as a plain dict, not Jinja's ``ChainMap`` over the environment's: every
        render copies them into its context and lists their names, which over a ``ChainMap`` costs more
        than rendering a short subject. The same names and values: this environment's globals are set
        once, in ``__init__``, before any template is compiled, and never change afterwards."""
        return {**self.globals, **(d or {})}

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _checked(left)
        _checked(right)
        if operator == "*":
            _refuse_over(_repeated_size(left, right), "a repetition")
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%":
            _check_printf(left, right)
        return _checked(super().call_binop(context, operator, left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        for argument in (*args, *kwargs.values()):
            _checked(argument)
        if isinstance(obj, Macro):
            _spend_iteration(MACRO_CALL_COST)
        # The sandbox wraps str.format in a function of its own; the method is its __wrapped__.
        method = getattr(obj, "__wrapped__", obj)
        subject = getattr(method, "__self__", None)
        name = getattr(method, "__name__", "")
        if isinstance(subject, str):
            if name in _STR_METHOD_ARGUMENTS:
                _refuse_over(_estimate(name, subject, dict(zip(_STR_METHOD_ARGUMENTS[name], args, strict=False))), name)
            elif name == "join" and args:
                items = list(args[0])
                _refuse_over(_joined_size(subject, items), "join")
                args = (items, *args[1:])
            elif name in {"format", "format_map"}:
                _check_format(subject, (*args, *kwargs.values()))
        elif obj is DEFAULT_NAMESPACE["lipsum"]:
            # lipsum(n=5, html=True, min=20, max=100): at most n paragraphs of `max` words.
            paragraphs = args[0] if args else kwargs.get("n", 5)
            words = args[3] if len(args) > 3 else kwargs.get("max", 100)
            _refuse_over(int(paragraphs) * int(words) * 12, "lipsum")
        return _checked(super().call(context, obj, *args, **kwargs))

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template's syntax tree with every loop counted against the budget, and every ``~``
        concatenation checked, its operands and its result (the sandbox has no hook for either)."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "_hw_counted", [], [], None, None, lineno=loop.lineno)
        for concat in list(tree.find_all(nodes.Concat)):
            concat.nodes = [_checked_node(operand) for operand in concat.nodes]
            _replace_node(tree, concat, _checked_node(concat))
        return tree


def _checked_node(node: nodes.Expr) -> nodes.Filter:
    return nodes.Filter(node, "_hw_checked", [], [], None, None, lineno=node.lineno)


def _replace_node(tree: nodes.Node, old: nodes.Node, new: nodes.Node) -> None:
    """Put ``new`` where ``old`` is in ``tree`` (a field or an item of a list field of its parent)."""
    for parent in tree.find_all(nodes.Node):
        for field in parent.fields:
            value = getattr(parent, field, None)
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list):
                for index, item in enumerate(value):
                    if item is old:
                        value[index] = new
                        return

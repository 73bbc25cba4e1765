"""Which of a lead's events a condition can read: the event types its value can depend on.

The scheduler reads each due lead's events before evaluating its conditions; most conditions look at
one or two kinds (``events.exists(e, e.type == 'purchased')``), and most leads have none of those.
:func:`event_types_read` works that out from the *checked* expression (cel-cpp's own AST, serialized
as a ``cel.expr.CheckedExpr`` protobuf and decoded here; no second CEL parser), so the scheduler reads
only events of those types and a condition with none of them to look at is not evaluated per lead.

The analysis is sound by construction: it returns a set of types only when every use of ``events`` is
the range of a comprehension (``exists``, ``all``, ``exists_one``, ``filter``, ``map`` with a filter)
whose predicate is decided for every other type by a comparison of the element's ``type`` with
string literals, combined with ``&&``, ``||`` and ``!``. In ``exists``, ``exists_one``, ``filter``
and ``map`` such an element makes the predicate false (it contributes nothing); in ``all`` it makes it
true (neutral). CEL's ``&&`` and ``||`` are commutative over errors (``false && error`` is false), so
removing those elements never changes a value, an error included. Anything else (``size(events)``,
``events[0]``, a predicate on ``e.step`` alone, a variable named ``events`` bound by a comprehension)
reads every event: ``None``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

# Field numbers of cel/expr/checked.proto and syntax.proto (cel-spec), the messages decoded here.
_ANY_VALUE = 2
_CHECKED_EXPR = 4
_EXPR_CONST, _EXPR_IDENT, _EXPR_SELECT, _EXPR_CALL, _EXPR_LIST, _EXPR_STRUCT, _EXPR_COMPREHENSION = 3, 4, 5, 6, 7, 8, 9
_CONST_STRING = 6


class _Malformed(Exception):
    """The bytes are not the protobuf expected: the caller assumes the condition reads everything."""


@dataclass
class _Node:
    """One ``cel.expr.Expr``: its kind and the parts this analysis reads."""

    kind: str  # const, ident, select, call, list, struct, comprehension, other
    name: str = ""  # ident: the name; select: the field; call: the function; comprehension: iter var
    text: str | None = None  # const: its string value, if it is a string
    test_only: bool = False  # select: has(x.f)
    children: list[_Node] = field(default_factory=list)  # select: [operand]; call: [target?, *args]; list
    target: bool = False  # call: children[0] is the receiver (x.f(...))
    # comprehension: iter_range, accu_init, loop_condition, loop_step, result; its accumulator's name
    # and every variable it binds
    parts: dict[str, _Node] = field(default_factory=dict)
    accumulator: str = ""
    variables: tuple[str, ...] = ()


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """The (field number, value) pairs of one protobuf message: varints as ints, the rest as bytes."""
    position, end = 0, len(data)
    while position < end:
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
            yield number, value
        elif wire == 2:
            length, position = _varint(data, position)
            if position + length > end:
                raise _Malformed("a field runs past its message")
            yield number, data[position : position + length]
            position += length
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        else:
            raise _Malformed(f"wire type {wire}")
    if position != end:
        raise _Malformed("a fixed-size field runs past its message")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise _Malformed("a truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _message(data: int | bytes) -> bytes:
    if not isinstance(data, bytes):
        raise _Malformed("a varint where a message was expected")
    return data


def _text(data: int | bytes) -> str:
    return _message(data).decode()


def _expr(data: bytes) -> _Node:
    for number, value in _fields(data):
        if number == _EXPR_CONST:
            text = next((_text(v) for n, v in _fields(_message(value)) if n == _CONST_STRING), None)
            return _Node("const", text=text)
        if number == _EXPR_IDENT:
            return _Node("ident", name=next((_text(v) for n, v in _fields(_message(value)) if n == 1), ""))
        if number == _EXPR_SELECT:
            node = _Node("select")
            for n, v in _fields(_message(value)):
                if n == 1:
                    node.children.append(_expr(_message(v)))
                elif n == 2:
                    node.name = _text(v)
                elif n == 3:
                    node.test_only = bool(v)
            return node
        if number == _EXPR_CALL:
            node = _Node("call")
            target: _Node | None = None
            for n, v in _fields(_message(value)):
                if n == 1:
                    target = _expr(_message(v))
                elif n == 2:
                    node.name = _text(v)
                elif n == 3:
                    node.children.append(_expr(_message(v)))
            if target is not None:
                node.children.insert(0, target)
                node.target = True
            return node
        if number == _EXPR_LIST:
            return _Node("list", children=[_expr(_message(v)) for n, v in _fields(_message(value)) if n == 1])
        if number == _EXPR_STRUCT:
            # Entries (field 2) hold a map key (3) and a value (4): both may use ``events``.
            children = [
                _expr(_message(part))
                for n, entry in _fields(_message(value))
                if n == 2
                for m, part in _fields(_message(entry))
                if m in (3, 4)
            ]
            return _Node("struct", children=children)
        if number == _EXPR_COMPREHENSION:
            return _comprehension(_message(value))
    return _Node("other")


_COMPREHENSION_PARTS = {2: "iter_range", 4: "accu_init", 5: "loop_condition", 6: "loop_step", 7: "result"}


def _comprehension(data: bytes) -> _Node:
    node = _Node("comprehension")
    variables: list[str] = []
    for n, v in _fields(data):
        if n in (1, 3, 8):  # iter_var, accu_var, iter_var2
            name = _text(v)
            variables.append(name)
            if n == 1:
                node.name = name
            elif n == 3:
                node.accumulator = name
        elif n in _COMPREHENSION_PARTS:
            node.parts[_COMPREHENSION_PARTS[n]] = _expr(_message(v))
    node.variables = tuple(variables)
    return node


def parse_checked(serialized: bytes) -> _Node:
    """The expression of a serialized ``google.protobuf.Any`` holding a ``cel.expr.CheckedExpr``."""
    checked = next((_message(v) for n, v in _fields(serialized) if n == _ANY_VALUE), None)
    if checked is None:
        raise _Malformed("no CheckedExpr in the Any")
    expr = next((_message(v) for n, v in _fields(checked) if n == _CHECKED_EXPR), None)
    if expr is None:
        raise _Malformed("no expression in the CheckedExpr")
    return _expr(expr)


# A set of event types, or None for "every type" (the top of the lattice).
Types = frozenset[str] | None


def _union(a: Types, b: Types) -> Types:
    return None if a is None or b is None else a | b


def _intersection(a: Types, b: Types) -> Types:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def _is_type_of(node: _Node, variable: str) -> bool:
    """``variable.type`` (not ``has(variable.type)``)."""
    return (
        node.kind == "select"
        and node.name == "type"
        and not node.test_only
        and len(node.children) == 1
        and node.children[0].kind == "ident"
        and node.children[0].name == variable
    )


def _string_literals(node: _Node) -> frozenset[str] | None:
    """The strings of a list literal of string constants (``['a', 'b']``), else None."""
    if node.kind != "list" or any(c.kind != "const" or c.text is None for c in node.children):
        return None
    return frozenset(c.text for c in node.children if c.text is not None)


def _decided(node: _Node, variable: str) -> tuple[Types, Types]:
    """(F, T): for an element whose type is outside F the predicate is false, outside T it is true."""
    if node.kind == "call" and not node.target:
        args = node.children
        if node.name in ("_==_", "_!=_") and len(args) == 2:
            for side, other in ((args[0], args[1]), (args[1], args[0])):
                if _is_type_of(side, variable) and other.kind == "const" and other.text is not None:
                    named = frozenset({other.text})
                    return (named, None) if node.name == "_==_" else (None, named)
        if node.name == "@in" and len(args) == 2 and _is_type_of(args[0], variable):
            literals = _string_literals(args[1])
            if literals is not None:
                return literals, None
        if node.name == "!_" and len(args) == 1:
            false, true = _decided(args[0], variable)
            return true, false
        if node.name == "_&&_" and len(args) == 2:
            (fa, ta), (fb, tb) = _decided(args[0], variable), _decided(args[1], variable)
            return _intersection(fa, fb), _union(ta, tb)
        if node.name == "_||_" and len(args) == 2:
            (fa, ta), (fb, tb) = _decided(args[0], variable), _decided(args[1], variable)
            return _union(fa, fb), _intersection(ta, tb)
    return None, None


def _is_ident(node: _Node | None, name: str) -> bool:
    return node is not None and node.kind == "ident" and node.name == name


def _range_types(node: _Node) -> Types:
    """The types a comprehension over ``events`` reads, from the shape of its loop step (the macros'
    expansions): ``@result || P`` (exists), ``@result && P`` (all), ``P ? … : @result`` (exists_one,
    filter, map with a filter); any other shape reads every element."""
    step, accu = node.parts.get("loop_step"), node.accumulator
    if step is None or not accu or step.kind != "call" or step.target:
        return None
    args = step.children
    if step.name == "_||_" and len(args) == 2 and _is_ident(args[0], accu):
        return _decided(args[1], node.name)[0]
    if step.name == "_&&_" and len(args) == 2 and _is_ident(args[0], accu):
        return _decided(args[1], node.name)[1]
    if step.name == "_?_:_" and len(args) == 3 and _is_ident(args[2], accu):
        return _decided(args[0], node.name)[0]
    return None


def _reads(node: _Node, variable: str) -> Types:
    """The event types ``node`` can read through the variable ``variable`` (``events``)."""
    if node.kind == "ident":
        return None if node.name == variable else frozenset()
    if node.kind == "comprehension":
        if variable in node.variables:
            return None  # a comprehension binding the same name: give up rather than track scopes
        reads: Types = frozenset()
        for name, part in node.parts.items():
            if name == "iter_range" and _is_ident(part, variable):
                reads = _union(reads, _range_types(node))
            else:
                reads = _union(reads, _reads(part, variable))
        return reads
    reads = frozenset()
    for child in node.children:
        reads = _union(reads, _reads(child, variable))
    return reads


def event_types_read(serialized: bytes, variable: str = "events") -> Types:
    """The event types whose events a condition's value can depend on (``frozenset()``: none at all),
    or None when it may read any event (or the expression could not be decoded)."""
    try:
        return _reads(parse_checked(serialized), variable)
    except (_Malformed, UnicodeDecodeError, RecursionError):
        return None


def _names(node: _Node, variable: str) -> bool:
    if node.kind == "ident":
        return node.name == variable
    if node.kind == "comprehension":
        return variable in node.variables or any(_names(p, variable) for p in node.parts.values())
    return any(_names(child, variable) for child in node.children)


def names_variable(serialized: bytes, variable: str) -> bool:
    """Whether the expression reads ``variable`` at all (True when it could not be decoded, or when a
    comprehension binds the same name: the safe answer)."""
    try:
        return _names(parse_checked(serialized), variable)
    except (_Malformed, UnicodeDecodeError, RecursionError):
        return True

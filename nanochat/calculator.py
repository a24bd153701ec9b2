"""
The calculator tool the engine runs for the model: <|python_start|> expr <|python_end|> is
evaluated by `use_calculator(expr)` and its result forced back as <|output_start|> ... <|output_end|>.

The calculator is NOT a Python sandbox: it parses with `ast` and evaluates only an allow-list
(number literals with + - * / // % ** and unary +/-, string literals and a few str methods).
Names, attributes other than those methods, subscripts, comprehensions, lambdas and any other
call are refused. Every intermediate value is size-checked (ints up to 1024 bits, strings up
to 1000 characters) and the walk stops after a time limit, so no input can run for long.
Results read as the training data's annotations do ("24", not "24.0").
"""

import ast
import math
import operator
import time

_MAX_EXPR_CHARS = 500
_MAX_INT_BITS = 1024
_MAX_STR_CHARS = 1000
_TIME_LIMIT_S = 0.05
_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARYOPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# str methods that return a bounded value and touch nothing outside the string
_STR_METHODS = {"count", "find", "rfind", "startswith", "endswith", "lower", "upper", "strip",
                "lstrip", "rstrip", "replace", "isdigit", "isalpha"}


class _Refused(Exception):
    """The expression uses something outside the allow-list, or exceeds a limit."""


def _checked(value):
    """Enforce the size limits on every intermediate value."""
    t = type(value)
    if t is int and value.bit_length() > _MAX_INT_BITS:
        raise _Refused("integer too large")
    if t is float and not math.isfinite(value):
        raise _Refused("float overflow")
    if t is str and len(value) > _MAX_STR_CHARS:
        raise _Refused("string too long")
    if t not in (int, float, str, bool):
        raise _Refused(f"result of type {t.__name__}")  # e.g. complex from (-8) ** 0.5
    return value


def _number(value):
    if type(value) not in (int, float):  # type() rather than isinstance: bool is not a number here
        raise _Refused("arithmetic on a non-number")
    return value


def _eval(node, deadline):
    if time.monotonic() > deadline:
        raise _Refused("time limit")
    if isinstance(node, ast.Constant):
        if type(node.value) in (int, float, str):
            return _checked(node.value)
        raise _Refused(f"literal {node.value!r}")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARYOPS:
        return _UNARYOPS[type(node.op)](_number(_eval(node.operand, deadline)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a = _number(_eval(node.left, deadline))
        b = _number(_eval(node.right, deadline))
        if isinstance(node.op, ast.Pow) and type(a) is int and type(b) is int and b > 0:
            # refuse before computing: the result has about b * bits(a) bits
            if abs(a) > 1 and b * a.bit_length() > _MAX_INT_BITS:
                raise _Refused("power too large")
        return _checked(_BINOPS[type(node.op)](a, b))
    if isinstance(node, ast.Call):
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr in _STR_METHODS) or node.keywords:
            raise _Refused("only calls of the allowed str methods")
        obj = _eval(func.value, deadline)
        if type(obj) is not str:
            raise _Refused("a str method called on a non-string")
        args = [_eval(arg, deadline) for arg in node.args]
        if any(type(arg) not in (int, str) for arg in args):
            raise _Refused("str method arguments must be strings or integers")
        return _checked(getattr(str, func.attr)(obj, *args))  # looked up on str itself, from the allow-list
    raise _Refused(f"{type(node).__name__} is not allowed")


def format_result(value):
    """The result as the training data writes it (GSM8K's <<48/2=24>>): an integral float as an
    integer ("24", not "24.0"), other floats to 12 significant digits (0.1+0.2 gives "0.3"),
    ints, strings and bools as str() gives them."""
    if type(value) is not float:
        return str(value)
    if value.is_integer():
        return str(int(value))  # finite (checked): at most 1024 bits, 309 digits
    return f"{value:.12g}"  # non-integral, so |value| < 2^53: tiny ones keep an exponent ("3e-20")


def use_calculator(expr):
    """Evaluate a restricted arithmetic/string expression; the result as a string, or None when
    the expression is invalid, forbidden or too large. Never raises."""
    try:
        if not isinstance(expr, str) or len(expr) > _MAX_EXPR_CHARS:
            return None
        tree = ast.parse(expr.strip(), mode="eval")
        return format_result(_eval(tree.body, time.monotonic() + _TIME_LIMIT_S))
    except Exception:  # _Refused, SyntaxError, ZeroDivisionError, OverflowError, RecursionError, ...
        return None

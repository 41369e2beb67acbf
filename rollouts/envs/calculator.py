"""An exact calculator tool: arithmetic expressions parsed with ``ast`` and evaluated over fractions.

Only numbers, ``+ - * / // % **``, unary minus/plus and parentheses pass a strict node whitelist; nothing is
ever handed to ``eval``. Values are ``Fraction``s, so ``0.1+0.2`` is exactly ``0.3`` and ``347*28`` prints
``9716``. A power with a non-integer exponent is the one inexact operation (computed in floating point).
Every literal and every intermediate result is held to ``max_digits`` digits (numerator and denominator),
checked before a power is computed, so ``9**9**9`` is refused at once instead of exhausting memory.
"""

from __future__ import annotations

import ast
import decimal
import math
import operator
from dataclasses import dataclass
from fractions import Fraction

from rollouts.envs.base import Tool, ToolError

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
REFUSED_OPERATORS = {ast.BitXor: "'^' (write ** for a power)", ast.BitAnd: "'&'", ast.BitOr: "'|'",
                     ast.LShift: "'<<'", ast.RShift: "'>>'", ast.MatMult: "'@'", ast.Invert: "'~'", ast.Not: "'not'"}
BITS_PER_DIGIT = math.log2(10)


class CalculatorError(ToolError):
    """The expression is not plain arithmetic, or its value is out of bounds."""


@dataclass(frozen=True)
class CalculatorLimits:
    """Bounds that keep one expression cheap to evaluate and its answer short."""

    max_length: int = 200
    """Longest expression accepted, in characters (also bounds nesting depth)."""
    max_digits: int = 100
    """Most decimal digits in any literal or intermediate numerator or denominator."""
    significant_digits: int = 15
    """Digits printed for a result that is not an exact short decimal (``1/3`` -> ``0.333333333333333``)."""

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            if getattr(self, name) < 1:
                raise ValueError(f"CalculatorLimits.{name}: got {getattr(self, name)!r}, expected >= 1")


def calculate(expression: str, limits: CalculatorLimits = CalculatorLimits()) -> str:
    """The value of ``expression``, printed as an integer when it is one; ``CalculatorError`` says why not."""
    return format_value(evaluate(expression, limits), limits.significant_digits)


def evaluate(expression: str, limits: CalculatorLimits = CalculatorLimits()) -> Fraction:
    """The exact value of ``expression``."""
    if len(expression) > limits.max_length:
        raise CalculatorError(f"expression too long: {len(expression)} characters, at most {limits.max_length}")
    if not expression.strip():
        raise CalculatorError("empty expression")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise CalculatorError(f"not an arithmetic expression: {getattr(e, 'msg', None) or e}") from None
    return _Evaluator(expression.strip(), limits).visit(tree.body)


def format_value(value: Fraction, significant_digits: int = 15) -> str:
    """An integer as digits; anything else as a decimal, exact when it fits ``significant_digits``."""
    if value.denominator == 1:
        return str(value.numerator)
    with decimal.localcontext() as ctx:
        ctx.prec = significant_digits
        # normalize: 1.41421356237310 has a zero only the precision put there
        return str((decimal.Decimal(value.numerator) / decimal.Decimal(value.denominator)).normalize())


class _Evaluator:
    def __init__(self, source: str, limits: CalculatorLimits):
        self.source, self.limits = source, limits
        self.max_bits = math.ceil(limits.max_digits * BITS_PER_DIGIT)
        self.bound = 10**limits.max_digits  # the smallest number with one digit too many

    def visit(self, node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant):
            return self._checked(self._number(node))
        if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
            return UNARY[type(node.op)](self.visit(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            left, right = self.visit(node.left), self.visit(node.right)
            if right == 0 and not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
                raise CalculatorError("division by zero")
            return self._checked(BINARY[type(node.op)](left, right))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            return self._checked(self._power(self.visit(node.left), self.visit(node.right)))
        raise CalculatorError(self._refusal(node))

    def _number(self, node: ast.Constant) -> Fraction:
        value = node.value
        if type(value) is int:
            return Fraction(value)
        if type(value) is float:
            # re-read the literal: the float is already rounded, the text is exact
            exact = decimal.Decimal((ast.get_source_segment(self.source, node) or repr(value)).replace("_", ""))
            # Fraction would expand 1e999999 into a million-digit integer before any check could run
            if abs(exact.as_tuple().exponent) > 4 * self.limits.max_digits:
                raise CalculatorError(f"number too large or too precise: more than {self.limits.max_digits} digits")
            return Fraction(exact)
        raise CalculatorError(f"{ast.get_source_segment(self.source, node) or repr(value)} is not a number")

    def _power(self, base: Fraction, exponent: Fraction) -> Fraction:
        if exponent.denominator == 1:
            e = exponent.numerator
            if base == 0 and e < 0:
                raise CalculatorError("division by zero (0 to a negative power)")
            # |p/q|**e has at least e*(bits-1) bits: refuse before computing whatever surely is too long
            size = max(base.numerator.bit_length(), base.denominator.bit_length()) - 1
            if size * abs(e) > self.max_bits:
                kind = "large" if (abs(base) > 1) == (e > 0) else "precise"
                raise CalculatorError(f"number too {kind}: more than {self.limits.max_digits} digits")
            return base**e
        if base < 0:
            raise CalculatorError("a negative number to a fractional power is not a real number")
        try:
            result = float(base) ** float(exponent)
        except OverflowError:
            raise CalculatorError(f"number too large: more than {self.limits.max_digits} digits") from None
        return Fraction(result)

    def _checked(self, value: Fraction) -> Fraction:
        if abs(value.numerator) >= self.bound or value.denominator >= self.bound:
            kind = "large" if abs(value) >= 1 else "precise"
            raise CalculatorError(f"number too {kind}: more than {self.limits.max_digits} digits")
        return value

    def _refusal(self, node: ast.AST) -> str:
        if isinstance(node, ast.Name):
            return f"names are not allowed ({node.id!r}): write numbers and operators only"
        if isinstance(node, ast.Call):
            return "function calls are not allowed: write numbers and operators only"
        if isinstance(node, ast.Attribute):
            return "attribute access is not allowed: write numbers and operators only"
        op = getattr(node, "op", None) or (node.ops[0] if isinstance(node, ast.Compare) else None)
        if op is not None:
            shown = REFUSED_OPERATORS.get(type(op), type(op).__name__)
            return f"unsupported operator {shown}: use + - * / // % ** and parentheses"
        return f"unsupported syntax ({type(node).__name__}): use numbers, + - * / // % ** and parentheses"


def calculator_tool(name: str = "calculator", limits: CalculatorLimits = CalculatorLimits()) -> Tool:
    """The calculator as a ``Tool`` taking one ``expression``; ``name="calc"`` suits the tiny model."""

    def run(expression: str) -> str:
        return calculate(expression, limits)

    return Tool(
        name=name,
        description="Evaluate an arithmetic expression exactly: numbers, + - * / // % **, parentheses.",
        parameters={"type": "object", "additionalProperties": False, "required": ["expression"],
                    "properties": {"expression": {"type": "string", "description": "e.g. (347*28)-15/4"}}},
        fn=run,
    )

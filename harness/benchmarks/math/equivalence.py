"""MATH answers: the last `\\boxed{...}` of a solution, and equivalence after normalisation (SPEC 2.3).

The rules are those of the MATH benchmark's `is_equiv` (Hendrycks et al.), which MetaMath, PiSSA and MiLoRA
score with: two answers are equivalent when their normalised strings are equal. Normalisation, in order:
drop line breaks, `\\!`, double backslashes; `\\tfrac`/`\\dfrac` -> `\\frac`; drop `\\left`/`\\right`, degree
signs, `\\$`, a trailing `\\text{ unit}`, `\\%`; give leading decimal points a 0; drop a short `x =` prefix;
brace `\\sqrt3` and `\\frac12`; drop spaces; `0.5` and integer `a/b` -> `\\frac{a}{b}`. Where a rule cannot
parse an answer (two units, a `\\frac` or `\\sqrt` with nothing after it), the two answers are compared as written,
as the original does.
No library ships these functions without pulling in lm-eval[math]'s sympy/antlr pins (which break Hydra's
antlr), so they are written here from the published rules.
"""

from __future__ import annotations


def last_boxed(text: str) -> str | None:
    """The last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed x`) in `text`, braces included; None if none."""
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    if text.startswith("\\boxed ", start):  # `\boxed 5$`: up to the closing dollar
        return text[start:].split("$")[0]
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None  # unbalanced


def unbox(boxed: str | None) -> str | None:
    """`\\boxed{x}` -> `x` (also `\\fbox{x}` and `\\boxed x`); None stays None."""
    if boxed is None:
        return None
    for prefix in ("\\boxed ", "\\boxed{", "\\fbox{"):
        if boxed.startswith(prefix):
            return boxed[len(prefix):] if prefix.endswith(" ") else boxed[len(prefix):-1]
    return boxed


def math_gold(solution: str) -> str:
    """The gold answer of a MATH solution: the content of its last `\\boxed{}`."""
    answer = unbox(last_boxed(solution))
    if answer is None:
        raise ValueError(f"MATH solution without \\boxed{{}}: {solution[-80:]!r}")
    return answer


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part:
            raise IndexError("\\frac at the end")  # as the original: the answers are compared as written
        if part.startswith("{"):
            out += part
            continue
        if len(part) < 2:
            return s  # as the original: a malformed \frac leaves the whole string as it was
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest)
    return out


def _fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    # Not integers (x/2, \\pi/2): int() raises and the ValueError escapes, as in MetaMath's util.py, which catches
    # only the AssertionError below: is_equiv then compares the answers as written.
    a, b = int(parts[0]), int(parts[1])
    return s if s != f"{a}/{b}" else "\\frac{" + str(a) + "}{" + str(b) + "}"


def _fix_sqrt(s: str) -> str:
    parts = s.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        out += "\\sqrt" + (part if part.startswith("{") else "{" + part[0] + "}" + part[1:])  # "\\sqrt" at the end: IndexError
    return out


def normalize_math_answer(s: str) -> str:
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    if "\\text{ " in s:  # a unit written after the number: 5\text{ cm}
        before, *units = s.split("\\text{ ")
        if len(units) != 1:
            raise ValueError("more than one unit")  # the original asserts a single one
        s = before
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "x = 5", "k=3"
        s = sides[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def math_equiv(a: str | None, b: str | None) -> bool:
    """True when the two answers are equal after normalisation (both missing counts as equal, as the original)."""
    if a is None or b is None:
        return a is None and b is None
    try:
        return normalize_math_answer(a) == normalize_math_answer(b)
    except (ValueError, IndexError):  # a rule cannot parse the answer (as the original): compare as written
        return a == b

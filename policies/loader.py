"""Reading, checking and writing policy files.

Errors point at the file, the line and the field: the YAML is composed once to keep every node's
position, and each pydantic error location (`models.3.size_mb`) is walked through that node tree to
the line that holds it. The only I/O in `policies` is `load_policy` reading the file it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from policies.model import CrossCheckError, Policy

__all__ = [
    "DEFAULT_POLICY",
    "PolicyError",
    "PolicyIssue",
    "default_policy_text",
    "dump_policy",
    "load_default_policy",
    "load_policy",
    "parse_policy",
]

DEFAULT_POLICY = "default.yaml"

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True)
class PolicyIssue:
    source: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PolicyError(ValueError):
    """A policy file that cannot be used; `issues` holds one entry per problem found."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def load_policy(path: str | Path) -> Policy:
    """Read and check the policy file at `path`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([PolicyIssue(str(p), None, "", "no such file")]) from None
    except IsADirectoryError:
        raise PolicyError([PolicyIssue(str(p), None, "", "is a directory, not a policy file")]) from None
    except UnicodeDecodeError as exc:
        raise PolicyError([PolicyIssue(str(p), None, "", f"not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise PolicyError([PolicyIssue(str(p), None, "", exc.strerror or str(exc))]) from None
    return parse_policy(text, source=str(p))


def default_policy_text() -> str:
    return resources.files("policies").joinpath(DEFAULT_POLICY).read_text(encoding="utf-8")


def load_default_policy() -> Policy:
    """The policy shipped with the package: the article's decision map for the Bengal case study."""
    return parse_policy(default_policy_text(), source=f"policies/{DEFAULT_POLICY}")


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Check policy YAML `text`; `source` names it in error messages."""
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # a safe loader: plain YAML types only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "not valid YAML"
        raise PolicyError([PolicyIssue(source, line, "", f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([PolicyIssue(source, None, "", f"YAML error: {exc}")]) from None
    if root is None or not isinstance(data, dict):
        raise PolicyError([PolicyIssue(source, 1, "", "a policy file must be a YAML mapping of sections")])
    duplicates = list(_duplicate_keys(root, source))
    if duplicates:
        raise PolicyError(duplicates)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_issues_from(exc, root, source)) from None


def dump_policy(policy: Policy) -> str:
    """YAML that `parse_policy` reads back into an equal policy."""
    data = policy.model_dump(mode="json")
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)


# ------------------------------------------------------------------------------------- error mapping


def _issues_from(exc: ValidationError, root: yaml.Node, source: str) -> list[PolicyIssue]:
    issues: list[PolicyIssue] = []
    for err in exc.errors():
        loc: tuple[str | int, ...] = tuple(err["loc"])
        cross = err.get("ctx", {}).get("error")
        if isinstance(cross, CrossCheckError):
            for sub_loc, message in cross.issues:
                full = loc + sub_loc
                issues.append(PolicyIssue(source, _line_of(root, full), _dotted(full), message))
            continue
        issues.append(PolicyIssue(source, _line_of(root, loc), _dotted(loc), _message(err)))
    issues.sort(key=lambda i: (i.line if i.line is not None else 0, i.field))
    return issues


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key {err['loc'][-1]!r}"
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind == "string_pattern_mismatch" and "pattern" in err.get("ctx", {}):
        msg = f"{err.get('input')!r} does not match {err['ctx']['pattern']}"
    return msg


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_of(root: yaml.Node, loc: tuple[str | int, ...]) -> int | None:
    """The 1-based line of `loc`, or of its deepest ancestor present in the file.

    A mapping entry is reported at its key's line (a block list or mapping starts on the line after
    its key, but the key is what a person looks for); a list item at the item's first line.
    """
    node = root
    line = root.start_mark.line
    for part in loc:
        step = _child(node, part)
        if step is None:
            break
        node, line = step
    return line + 1


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, int] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value, key.start_mark.line
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item: yaml.Node = node.value[part]
        return item, item.start_mark.line
    return None


def _duplicate_keys(root: yaml.Node, source: str) -> list[PolicyIssue]:
    issues: list[PolicyIssue] = []
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        issues.append(PolicyIssue(source, key.start_mark.line + 1, key.value, "key is defined twice"))
                    seen.add(key.value)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    issues.sort(key=lambda i: i.line or 0)
    return issues

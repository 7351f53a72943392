"""The error of a method's options or saved files: one line naming the method and what is wrong."""

from __future__ import annotations

from harness.errors import HarnessError


class MethodConfigError(HarnessError, ValueError):
    default_hint = "see conf/method/<name>.yaml for the method's options"

"""The one exception type that scripts turn into a single ``error: ...`` line and exit code 2."""


class UserError(Exception):
    """Bad input or environment (data, hyper-parameters, paths): the message says what, where and how to fix."""

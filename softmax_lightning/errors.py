"""The one exception type that scripts turn into a single ``error: ...`` line and exit code 2."""


class UserError(Exception):
    """Bad input or environment (data, hyper-parameters, paths): the message says what, where and how to fix."""


def one_line(e: BaseException | str, limit: int | None = None) -> str:
    """An exception's message (or any text) on one line, cut to ``limit`` characters: for ``error:`` lines."""
    text = " ".join(str(e).split()) or (type(e).__name__ if isinstance(e, BaseException) else "")
    return text[:limit] if limit else text

"""The one exception type that the CLI turns into a single clear sentence."""


class InputError(ValueError):
    """Bad user input: a file, field or setting that cannot be used as given.

    The message is a complete sentence naming the file (when there is one), the field and
    what was expected. The CLI prints it and exits non-zero without a traceback.
    """


class DataWarning(UserWarning):
    """Data that could be used only after a correction the user must know about (e.g. raw
    counts clipped to stay positive). The message is one sentence naming the file and what
    was changed; the CLI prints it as `ctbayes: warning: ...`."""


def naming(err: InputError, source) -> InputError:
    """`err` if its message names `source`, else the same sentence prefixed with it."""
    message, source = str(err), str(source)
    if source in message:
        return err
    if len(message) > 1 and message[0].isupper() and message[1].islower():
        message = message[0].lower() + message[1:]
    return InputError(f"{source}: {message}")

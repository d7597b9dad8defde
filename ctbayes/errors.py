"""The one exception type that the CLI turns into a single clear sentence."""


class InputError(ValueError):
    """Bad user input: a file, field or setting that cannot be used as given.

    The message is a complete sentence naming the file (when there is one), the field and
    what was expected. The CLI prints it and exits non-zero without a traceback.
    """

"""The one exception type a user can cause. The CLI prints its message and exits 2, with no traceback."""


class PeftGpt2Error(Exception):
    """A problem with the user's input (recipe, data file, model source, adapter folder), said plainly.

    The message names the file, record or key at fault and what to do about it.
    """

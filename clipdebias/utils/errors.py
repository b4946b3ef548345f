"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user: wrong path, unknown name, malformed option value, missing weights.

    The message must be one line that says what is wrong and how to fix it.
    """


EXIT_USER_ERROR = 2

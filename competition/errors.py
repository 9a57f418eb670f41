"""Errors that are the user's to fix: printed as one line, never as a traceback."""


class UserError(Exception):
    """A mistake in the user's data, config or command line; the message says what to do."""

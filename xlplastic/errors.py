"""Errors a user can act on: the CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint), phrased as what was expected."""

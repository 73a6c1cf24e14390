"""The error for bad user input: a config value, a data folder, a data file."""


class UserError(ValueError):
  """Bad input that the user can fix; the entry points print its one-line message only."""

"""Errors the engine raises on purpose, each with a message meant for the user."""


class SeqScopeError(Exception):
    """Base of the engine's own errors: the message says what is wrong in plain words."""


class LoadError(SeqScopeError):
    """A checkpoint could not be opened or understood."""


class InputError(SeqScopeError):
    """An input (text, token ids, numeric array) does not fit the model."""


class Cancelled(SeqScopeError):
    """A run was cancelled by its caller."""


class InterventionError(SeqScopeError, ValueError):
    """An intervention that cannot apply to this model or input, with the reason in words."""

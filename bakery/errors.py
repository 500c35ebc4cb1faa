"""The one error type a user of talos-bake can meet: a sentence naming the thing and the fix."""


class BakeError(Exception):
    """Shown to the user as one line, never as a traceback."""

"""The one exception type for mistakes a user can make (bad file, bad option, bad prompt).

The command line turns it into a single line on stderr and exit status 2; anything else
that escapes is a bug in tinygpt and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, explained in one line."""

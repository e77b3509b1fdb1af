"""The one exception type for wrong use and bad input; the CLI prints its message and exits 2."""
import errno

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # OSError errnos that mean "no room to write": one message, not a traceback


class T2IError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""

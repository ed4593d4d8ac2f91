# Signal handling first, before anything else is imported: a Ctrl-C at any moment of start-up
# (torch and diffusers take seconds to import) ends the process with one line and exit 130.
from .base.interrupts import startup

startup()

from .cli.main import console  # noqa: E402

console()

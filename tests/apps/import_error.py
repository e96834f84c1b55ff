"""An app module that fails at import time, as a typo in a deploy would."""

import this_module_does_not_exist  # noqa: F401

app = None

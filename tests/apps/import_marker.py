"""An app that records which process imported it (DUCK_TEST_IMPORT_LOG), for --preload."""

import os

from tests.apps.basic import app as basic_app

with open(os.environ["DUCK_TEST_IMPORT_LOG"], "a") as _file:
    _file.write(f"{os.getpid()}\n")

app = basic_app

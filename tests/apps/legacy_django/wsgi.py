"""WSGI entry point: tests.apps.legacy_django.wsgi:application"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.legacy_django.settings")

application = get_wsgi_application()

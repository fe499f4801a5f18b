"""Settings of the bookshop test site: a Django project as `startproject` lays one out, plus forwarder.

The forwarder glue is the database ENGINE, the database NAME from FORWARDER_DATABASE and, in
asgi.py, `forwarder.django.get_asgi_application()`.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Every node must sign sessions and messages with the same key.
SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
# A form posted on a replica is forwarded to the primary with the Host of the primary and the
# replica's own host in X-Forwarded-Host: CSRF's Origin check must compare against the latter.
USE_X_FORWARDED_HOST = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "shelf",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "bookshop.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "bookshop.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "forwarder.django",
        "NAME": os.environ["FORWARDER_DATABASE"],
        # Asked for on purpose: the backend must still close a replica's connection per request.
        "CONN_MAX_AGE": 600,
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/admin/login/"

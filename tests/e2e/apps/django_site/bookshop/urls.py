"""URLs of the bookshop site: the admin and the shelf app."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("shelf.urls")),
]

"""The shelf's models: books, and pages whose visits are counted (a GET that writes)."""

from django.db import models
from django.urls import reverse


class Book(models.Model):
    title = models.CharField(max_length=200)
    author = models.CharField(max_length=200)
    year = models.IntegerField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return str(self.title)

    def get_absolute_url(self) -> str:
        return str(reverse("book-detail", kwargs={"pk": self.pk}))


class Page(models.Model):
    slug = models.SlugField(primary_key=True)
    hits = models.IntegerField(default=0)

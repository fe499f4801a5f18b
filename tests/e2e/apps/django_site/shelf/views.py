"""The shelf's views: class-based views for books, and a function view that counts visits."""

from django.contrib import messages
from django.contrib.messages.views import SuccessMessageMixin
from django.db.models import F
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse_lazy
from django.views import generic

from .forms import BookForm
from .models import Book, Page


class BookList(generic.ListView):
    model = Book


class BookDetail(generic.DetailView):
    model = Book


class BookCreate(SuccessMessageMixin, generic.CreateView):
    model = Book
    form_class = BookForm
    success_message = "Added %(title)s"


class BookUpdate(SuccessMessageMixin, generic.UpdateView):
    model = Book
    form_class = BookForm
    success_message = "Saved %(title)s"


class BookDelete(generic.DeleteView):
    model = Book
    success_url = reverse_lazy("book-list")

    def form_valid(self, form):  # type: ignore[no-untyped-def]
        messages.success(self.request, f"Deleted {self.object.title}")
        return super().form_valid(form)


def visit(request: HttpRequest, slug: str) -> HttpResponse:
    """Every visit counts: a GET that writes."""
    page, _ = Page.objects.get_or_create(slug=slug)
    Page.objects.filter(pk=slug).update(hits=F("hits") + 1)
    page.refresh_from_db()
    return render(request, "shelf/page.html", {"page": page})


def pages(request: HttpRequest) -> HttpResponse:
    return render(request, "shelf/pages.html", {"pages": Page.objects.order_by("slug")})

from django.urls import path

from . import views

urlpatterns = [
    path("books/", views.BookList.as_view(), name="book-list"),
    path("books/new/", views.BookCreate.as_view(), name="book-create"),
    path("books/<int:pk>/", views.BookDetail.as_view(), name="book-detail"),
    path("books/<int:pk>/edit/", views.BookUpdate.as_view(), name="book-update"),
    path("books/<int:pk>/delete/", views.BookDelete.as_view(), name="book-delete"),
    path("pages/", views.pages, name="page-list"),
    path("pages/<slug:slug>/", views.visit, name="page-visit"),
]
